"""The SimuDy authors' versions of their baselines, kept so that the paper's comparison can be
rerun as it was made: per-sample scalar weights on training-loss gradients,

    θ0 − θf ≈ Σ_p Σ_i λ_p,i ∇θ loss(f(x_i; θ_p), y_i),   λ unconstrained,

at θf only (their "Buzaglo") or at θ0 and θf (their "Loo"); an L2 loss for the first
`l2_steps` steps, then cosine_weight × (1 − cos) + tv_weight × TV; Adam."""

from __future__ import annotations

import torch

from simudy.attacks.base import register
from simudy.attacks.matching import GradientMatching
from simudy.losses import per_sample_loss
from simudy.objectives import cosine_distance, total_variation
from simudy.victim import parameter_change


@register
class WeightedCE(GradientMatching):
    name = "weighted_ce"
    columns = ["loss", "distance", "tv", "stage"]

    def requires(self) -> set[str]:
        return super().requires() | {"theta0"}  # the target is θ0 − θf

    def prepare(self, device: torch.device) -> None:
        cfg = self.cfg
        self.tensors["lambdas"] = self.weights((len(cfg.points), self.m), 0.0, cfg.lambda_init, device)
        self.points = [self.params_at(p) for p in cfg.points]
        self.target = parameter_change(self.victim)  # θ0 − θf
        self.loss_kind = self.threat.loss_kind()
        self.optimizers = [torch.optim.Adam([self.tensors["images"], self.tensors["lambdas"]], lr=cfg.lr)]

    def step(self, step: int) -> dict:
        cfg, x, lam = self.cfg, self.tensors["images"], self.tensors["lambdas"]
        g = sum(self.gradient(params, x, lambda out, w=w: (w * per_sample_loss(self.loss_kind, out, self.labels)).sum())
                for params, w in zip(self.points, lam))
        tv = total_variation(x)
        if step < cfg.l2_steps:
            distance = (g - self.target).pow(2).sum()
            loss = distance
        else:
            distance = cosine_distance(g, self.target)
            loss = cfg.cosine_weight * distance + cfg.tv_weight * tv
        (opt,) = self.optimizers
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.item(), "distance": distance.item(), "tv": tv.item(),
                "stage": "l2" if step < cfg.l2_steps else "cosine"}
