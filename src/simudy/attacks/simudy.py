"""SimuDy (Alg. 1, Eq. 5): optimise dummy images so that training on them, simulated from θ0,
moves the parameters the way the real training did."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
from tqdm import tqdm

from simudy.attacks.base import Attack, Reconstruction, ThreatModel, register
from simudy.devices import pick_device
from simudy.errors import SimudyError
from simudy.objectives import cosine_distance, squared_distance, total_variation
from simudy.runstate import RunDir, RunState, fingerprint
from simudy.simulate import TrainingPlan, flatten, simulate
from simudy.victim import Victim, parameter_change

log = logging.getLogger(__name__)

LOSS_COLUMNS = ["step", "loss", "distance", "tv", "lr", "clipped_steps", "seconds"]


def balanced_labels(n: int, num_classes: int, gen: torch.Generator) -> torch.Tensor:
    """An equal number of each class (as far as n allows), in random order (Alg. 1, line 2)."""
    labels = torch.arange(n) % num_classes
    return labels[torch.randperm(n, generator=gen)]


def cyclic_cosine(base_lr: float, step: int, period: int) -> float:
    """Closed form of CosineAnnealingLR(T_max=period) stepped every iteration: it falls to 0
    over `period` steps and climbs back over the next `period`."""
    return base_lr * (1 + math.cos(math.pi * step / period)) / 2


@register
class SimuDy(Attack):
    name = "simudy"

    def plan(self, threat: ThreatModel, step: int) -> TrainingPlan:
        cfg, hp = self.cfg, threat.hyperparams
        if hp is None and (cfg.sim_lr is None or cfg.sim_batch_size is None):
            raise SimudyError("SimuDy without the victim's hyper-parameters needs sim_lr and sim_batch_size")
        clip = step < cfg.clip_fraction * cfg.steps
        return TrainingPlan(
            epochs=cfg.sim_epochs,
            batch_size=cfg.sim_batch_size or hp.batch_size,
            lr=cfg.sim_lr or hp.lr,
            clip_max_norm=cfg.clip_max_norm if clip else None,
            clip_to_norm=cfg.clip_to_norm if clip else None,
        )

    def objective(self, victim: Victim, target: torch.Tensor, x: torch.Tensor, labels: torch.Tensor,
                  plan: TrainingPlan) -> tuple[torch.Tensor, dict]:
        sim = simulate(victim.model, victim.theta0, x, labels, plan)
        change = flatten(sim.grad_sum)
        if self.cfg.loss == "cosine":
            distance = cosine_distance(change, target)
        else:
            distance = squared_distance(plan.lr * change, target)
        tv = total_variation(x)
        loss = distance + self.cfg.tv_weight * tv
        return loss, {"distance": distance.item(), "tv": tv.item(), "clipped_steps": sim.clipped_steps}

    def run(self, victim: Victim, threat: ThreatModel, workdir: Path) -> Reconstruction:
        cfg = self.cfg
        device = pick_device(cfg.device)
        victim = victim.to(device)
        target = parameter_change(victim)
        x, labels = self.initial_images(threat, device)
        opt = torch.optim.Adam([x], lr=cfg.lr, betas=tuple(cfg.betas))
        run = RunDir(workdir, fingerprint(cfg.model_dump(), victim.meta, target.cpu()), LOSS_COLUMNS)
        start, seconds = 0, 0.0
        if (state := run.resume()) is not None:
            start, seconds = state.step, state.seconds
            _restore(x, opt, state.tensors)

        bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=f"simudy n={len(x)}", mininterval=2)
        for step in bar:
            row = self.step(victim, threat, target, x, labels, opt, step)
            seconds += row.pop("seconds")
            run.record({**row, "seconds": round(seconds, 4)})
            bar.set_postfix(loss=f"{row['loss']:.4f}", refresh=False)
            if (step + 1) % cfg.log_every == 0:
                log.info("step %d/%d loss %.5f distance %.5f tv %.4f lr %.2e %.3f s/step", step + 1, cfg.steps,
                         row["loss"], row["distance"], row["tv"], row["lr"], seconds / (step + 1))
            if (step + 1) % cfg.snapshot_every == 0 or step + 1 == cfg.steps:
                run.snapshot(RunState(step + 1, seconds, _capture(x, opt)), x.detach().cpu())
        bar.close()
        rows = run.finish()
        info = {"steps": cfg.steps, "seconds": seconds, "device": str(device), "n_images": len(x),
                "final_loss": float(rows[-1]["loss"]) if rows else None, "loss_rows": rows}
        return Reconstruction(images=x.detach().cpu(), labels=labels.cpu(), info=info)

    def initial_images(self, threat: ThreatModel, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise images in normalised space and balanced labels (Alg. 1, lines 1-2), seeded."""
        n = self.cfg.n_images or threat.n_images
        gen = torch.Generator().manual_seed(self.cfg.seed)
        x = self.cfg.init_scale * torch.randn((n, *threat.image_shape), generator=gen)
        labels = balanced_labels(n, threat.num_classes, gen)
        return x.to(device).requires_grad_(True), labels.to(device)

    def step(self, victim: Victim, threat: ThreatModel, target: torch.Tensor, x: torch.Tensor,
             labels: torch.Tensor, opt: torch.optim.Optimizer, step: int) -> dict:
        """One outer step (Alg. 1, lines 6-15); returns its loss-log row."""
        t0 = time.perf_counter()
        lr = cyclic_cosine(self.cfg.lr, step, self.cfg.cosine_period)
        for group in opt.param_groups:
            group["lr"] = lr
        loss, parts = self.objective(victim, target, x, labels, self.plan(threat, step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"step": step + 1, "loss": loss.item(), "lr": lr, **parts, "seconds": time.perf_counter() - t0}


def _capture(x: torch.Tensor, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    state = opt.state[x]
    tensors = {"images": x.detach().cpu()}
    if state:
        tensors |= {"adam_exp_avg": state["exp_avg"].cpu(), "adam_exp_avg_sq": state["exp_avg_sq"].cpu(),
                    "adam_step": torch.as_tensor(state["step"]).reshape(1).cpu()}
    return tensors


def _restore(x: torch.Tensor, opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        x.copy_(tensors["images"].to(x.device))
    if "adam_exp_avg" in tensors:
        opt.state[x] = {"step": tensors["adam_step"].reshape(()).clone(),
                        "exp_avg": tensors["adam_exp_avg"].to(x.device),
                        "exp_avg_sq": tensors["adam_exp_avg_sq"].to(x.device)}
