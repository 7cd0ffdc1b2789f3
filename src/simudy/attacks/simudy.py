"""SimuDy (Alg. 1, Eq. 5): optimise dummy images so that training on them, simulated from θ0,
moves the parameters the way the real training did."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch

from simudy.attacks.base import ThreatModel, balanced_labels, register
from simudy.attacks.optimise import IterativeAttack
from simudy.config import SimulatorConfig
from simudy.models import flatten
from simudy.objectives import cosine_distance, squared_distance, total_variation
from simudy.simulate import Simulation, TrainingPlan, matmul_precision, simulate
from simudy.simulate_reference import simulate_reference
from simudy.victim import Victim, parameter_change


def cyclic_cosine(base_lr: float, step: int, period: int) -> float:
    """Closed form of CosineAnnealingLR(T_max=period) stepped every iteration: it falls to 0
    over `period` steps and climbs back over the next `period`."""
    return base_lr * (1 + math.cos(math.pi * step / period)) / 2


def pick_simulator(options: SimulatorConfig) -> Callable[..., Simulation]:
    """`simulate_reference` for `reference: true`, else `simulate` with the options."""
    return simulate_reference if options.reference else partial(simulate, options=options)


@register
class SimuDy(IterativeAttack):
    name = "simudy"
    columns = ["loss", "distance", "tv", "lr", "clipped_steps"]

    def requires(self) -> set[str]:
        own = {"theta0"}
        if self.cfg.sim_lr is None or self.cfg.sim_batch_size is None:
            own.add("hyperparams")  # else the simulation's lr and batch size are preset (Sec. 4.3)
        return super().requires() | own

    def setup(self, victim: Victim, threat: ThreatModel, device: torch.device) -> None:
        """Noise images in normalised space and balanced labels (Alg. 1, lines 1-2), seeded."""
        cfg = self.cfg
        self.victim, self.threat, self.target = victim, threat, parameter_change(victim)
        gen = torch.Generator().manual_seed(cfg.seed)
        n = self.n_images(threat)
        x = cfg.init_scale * torch.randn((n, *threat.image_shape), generator=gen)
        self.labels = balanced_labels(n, threat.num_classes, gen).to(device)
        self.tensors = {"images": x.to(device).requires_grad_(True)}
        self.optimizers = [torch.optim.Adam([self.tensors["images"]], lr=cfg.lr, betas=tuple(cfg.betas))]

    def plan(self, step: int) -> TrainingPlan:
        cfg, hp = self.cfg, self.threat.hyperparams
        clip = step < cfg.clip_fraction * cfg.steps
        return TrainingPlan(
            epochs=cfg.sim_epochs,
            batch_size=hp.batch_size if cfg.sim_batch_size is None else cfg.sim_batch_size,
            lr=hp.lr if cfg.sim_lr is None else cfg.sim_lr,
            clip_max_norm=cfg.clip_max_norm if clip else None,
            clip_to_norm=cfg.clip_to_norm if clip else None,
            loss=self.threat.loss_kind(),
        )

    def objective(self, x: torch.Tensor, plan: TrainingPlan) -> tuple[torch.Tensor, dict]:
        sim = pick_simulator(self.cfg.simulator)(self.victim.model, self.victim.theta0, x, self.labels, plan)
        change = flatten(sim.grad_sum)
        if self.cfg.loss == "cosine":
            distance = cosine_distance(change, self.target)
        else:
            distance = squared_distance(plan.lr * change, self.target)
        tv = total_variation(x)
        loss = distance + self.cfg.tv_weight * tv
        return loss, {"distance": distance.item(), "tv": tv.item(), "clipped_steps": sim.clipped_steps}

    def step(self, step: int) -> dict:
        """One outer step (Alg. 1, lines 6-15)."""
        (opt,) = self.optimizers
        lr = cyclic_cosine(self.cfg.lr, step, self.cfg.cosine_period)
        for group in opt.param_groups:
            group["lr"] = lr
        with matmul_precision(self.cfg.simulator):
            loss, parts = self.objective(self.tensors["images"], self.plan(step))
            opt.zero_grad(set_to_none=True)
            loss.backward()
        opt.step()
        return {"loss": loss.item(), **parts, "lr": lr}
