"""Loo et al. 2024: the parameter change of a (nearly) linearised network is a dual-weighted
sum of output gradients. Here in the "init + final" form the SimuDy paper compares against:

    θf − θ0 ≈ Σ_p ∇θ Σ_i α_p,i · f(x_i; θ_p),   p ∈ {θ0, θf},   α_p,i ∈ R^outputs,

with an L2 loss, a box prior and a high-frequency penalty, through softplus activations that
sharpen towards ReLU over the run."""

from __future__ import annotations

import torch

from simudy.attacks.base import register
from simudy.attacks.matching import GradientMatching
from simudy.models import activation
from simudy.objectives import box_penalty, high_frequency
from simudy.victim import parameter_change


@register
class Loo(GradientMatching):
    name = "loo"
    columns = ["loss", "distance", "box", "hf", "sharpness"]

    def requires(self) -> set[str]:
        return super().requires() | {"theta0"}  # the target is θf − θ0

    def prepare(self, device: torch.device) -> None:
        cfg = self.cfg
        shape = (len(cfg.points), self.m, self.threat.num_outputs)
        self.tensors["duals"] = self.weights(shape, -cfg.dual_init, cfg.dual_init, device)
        self.points = [self.params_at(p) for p in cfg.points]
        self.target = -parameter_change(self.victim)  # θf − θ0
        self.optimizers = [torch.optim.Adam([self.tensors["images"], self.tensors["duals"]], lr=cfg.lr)]

    def sharpness(self, step: int) -> float:
        """Softplus β, geometric from the first to the last value of `softplus_beta`."""
        first, last = self.cfg.softplus_beta
        return first * (last / first) ** (step / max(1, self.cfg.steps - 1))

    def step(self, step: int) -> dict:
        cfg, x, duals = self.cfg, self.tensors["images"], self.tensors["duals"]
        beta = self.sharpness(step)
        with activation(self.victim.model, "softplus", beta):
            g = sum(self.gradient(params, x, lambda out, d=d: (d * out).sum()) for params, d in zip(self.points, duals))
        distance = (g - self.target).pow(2).sum() / self.target.pow(2).sum()
        box, hf = box_penalty(x, self.lo, self.hi), high_frequency(x)
        loss = distance + cfg.box_weight * box + cfg.hf_weight * hf
        (opt,) = self.optimizers
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.item(), "distance": distance.item(), "box": box.item(), "hf": hf.item(),
                "sharpness": beta}
