"""Haim et al. 2022 (binary) and Buzaglo et al. 2024 (multiclass): a homogeneous network
trained by gradient descent converges towards a KKT point of margin maximisation, where

    θ = Σ_i λ_i ∇θ margin_i(θ),   λ_i ≥ 0,

with margin_i = y_i·f(x_i) for one output and f_y(x_i) − max_{j≠y} f_j(x_i) for several.
Reconstruction minimises ‖θ − (1/m) Σ λ_i ∇θ margin_i‖² over m candidate images and λ, with
Σ relu(λ_min − λ_i)² and a box prior, SGD with momentum, and ReLU's backward pass replaced by
sigmoid(α·x). λ is averaged over the candidates, as in the authors' code, so that λ_min and
λ's init keep their published meaning whatever m is."""

from __future__ import annotations

import torch

from simudy.attacks.base import register
from simudy.attacks.matching import GradientMatching
from simudy.losses import margins
from simudy.models import activation, flatten
from simudy.objectives import box_penalty
from simudy.victim import parameter_change


@register
class KKT(GradientMatching):
    name = "kkt"
    columns = ["loss", "distance", "lambda_penalty", "box", "lambda_mean"]

    def requires(self) -> set[str]:
        return super().requires() | ({"theta0"} if self.cfg.target == "change" else set())

    def prepare(self, device: torch.device) -> None:
        cfg = self.cfg
        self.tensors["lambdas"] = self.weights((self.m,), 0.0, cfg.lambda_init, device)
        self.params = self.params_at("thetaf")
        thetaf = flatten(list(self.victim.thetaf.values()))
        self.target = thetaf if cfg.target == "thetaf" else -parameter_change(self.victim)
        self.optimizers = [
            torch.optim.SGD([self.tensors["images"]], lr=cfg.lr, momentum=cfg.momentum),
            torch.optim.SGD([self.tensors["lambdas"]], lr=cfg.lambda_lr, momentum=cfg.momentum),
        ]

    def step(self, step: int) -> dict:
        cfg, x, lam = self.cfg, self.tensors["images"], self.tensors["lambdas"]
        with activation(self.victim.model, "relu_sigmoid_grad", cfg.relu_grad_alpha):
            g = self.gradient(self.params, x, lambda out: (lam * margins(out, self.labels)).mean())
        distance = (self.target - g).pow(2).sum()
        lam_pen = (cfg.lambda_min - lam).relu().pow(2).sum()
        box = box_penalty(x, self.lo, self.hi)
        loss = distance + cfg.lambda_weight * lam_pen + cfg.box_weight * box
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in self.optimizers:
            opt.step()
        with torch.no_grad():
            lam.clamp_(min=0.0)  # λ ≥ 0: projected gradient descent
        return {"loss": loss.item(), "distance": distance.item(), "lambda_penalty": lam_pen.item(),
                "box": box.item(), "lambda_mean": lam.mean().item()}
