"""SimuDy (Alg. 1, Eq. 5): optimise dummy inputs so that training on them, simulated from θ0,
moves the parameters the way the real training did. The input kind (simudy.inputs) says what
a dummy is: an image, or a distribution over the vocabulary at each token position."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from simudy.attacks.base import Monitor, Reconstruction, ThreatModel, register
from simudy.attacks.optimise import Diverged, IterativeAttack
from simudy.config import SimulatorConfig
from simudy.contribution import contributions
from simudy.devices import pick_device
from simudy.errors import SimudyError
from simudy.models import flatten
from simudy.objectives import cosine_distance, squared_distance
from simudy.simulate import Simulation, TrainingPlan, matmul_precision, simulate
from simudy.simulate_reference import simulate_reference
from simudy.victim import Victim, parameter_change

log = logging.getLogger(__name__)

# The extra cosine terms on one embedding's change: (log column, the model attribute naming the
# parameter), each weighted by the attack's `<column>_weight`.
TERMS = (("position", "position_embedding"), ("token", "token_embedding"))


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
    inputs = ("image", "text")

    @property
    def columns(self) -> list[str]:
        return ["loss", "distance", "tv", *(column for column, _ in TERMS if getattr(self.cfg, f"{column}_weight")),
                "lr", "clipped_steps"]

    def requires(self) -> set[str]:
        # The hyper-parameters are never required: where they are withheld, the batch size is
        # preset and the learning rate searched for (Sec. 3).
        return super().requires() | {"theta0"}

    def run(self, victim: Victim, threat: ThreatModel, workdir: Path, monitor: Monitor | None = None) -> Reconstruction:
        if self.cfg.sim_lr is None and threat.hyperparams is None:
            result = self._search_and_run(victim, threat, workdir, monitor)
        else:
            result = super().run(victim, threat, workdir, monitor)
        result.extras["contribution"] = self.contribution()
        result.extras |= self.kind.outputs(result.images)
        result.extras |= {f"initial_{k}": v for k, v in self.kind.outputs(self.initial_images).items()}
        return result

    def readable(self, images: torch.Tensor) -> torch.Tensor:
        return self.kind.readable(images)

    def _search_and_run(self, victim: Victim, threat: ThreatModel, workdir: Path,
                        monitor: Monitor | None) -> Reconstruction:
        """Sec. 3: each lr of the grid runs the first `probe_steps` steps of the full run (in a
        work folder of its own, so probes resume and are kept); the lowest loss there goes on."""
        base, search = self.cfg, self.cfg.search
        device = pick_device(base.device)
        batch_size = search.batch_size if base.sim_batch_size is None else base.sim_batch_size
        probes = []
        for lr in search.lrs:
            self.cfg = base.model_copy(update={"sim_lr": lr, "sim_batch_size": batch_size})
            released = self.start(victim, threat, device)
            try:
                info = self.optimise(released, threat, workdir / _probe_folder(lr), until=search.probe_steps).info
                # The row at the probe's end: a folder that already went on past it keeps later rows.
                row = next(r for r in info["loss_rows"] if int(r["step"]) == search.probe_steps)
                probes.append({"lr": lr, "loss": float(row["loss"]), "seconds": float(row["seconds"])})
            except Diverged as err:
                log.warning("search: lr %g diverged (%s)", lr, err)
                probes.append({"lr": lr, "loss": None, "seconds": None})
        finite = [p for p in probes if p["loss"] is not None]
        if not finite:
            raise SimudyError(f"{self.name}: every learning rate of search.lrs {search.lrs} diverged in its probe")
        best = min(finite, key=lambda p: p["loss"])
        log.info("search: probe losses after %d steps %s; continuing lr %g", search.probe_steps,
                 ", ".join(f"{p['lr']:g}: {p['loss']}" for p in probes), best["lr"])
        self.cfg = base.model_copy(update={"sim_lr": best["lr"], "sim_batch_size": batch_size})
        result = self.optimise(self.start(victim, threat, device), threat, workdir / _probe_folder(best["lr"]),
                               monitor)
        probe_seconds = sum(p["seconds"] for p in finite)
        result.info["search"] = {"batch_size": batch_size, "probe_steps": search.probe_steps, "lr": best["lr"],
                                 "probes": probes, "probe_seconds": probe_seconds}
        result.info["seconds"] += probe_seconds - best["seconds"]  # the whole attack: every probe and the run
        return result

    def setup(self, victim: Victim, threat: ThreatModel, device: torch.device) -> None:
        """Noise images in normalised space and balanced labels (Alg. 1, lines 1-2), seeded."""
        cfg, hp = self.cfg, threat.hyperparams
        self.sim_batch_size = cfg.sim_batch_size if cfg.sim_batch_size is not None else (
            hp.batch_size if hp is not None else cfg.search.batch_size)
        self.sim_lr = cfg.sim_lr if cfg.sim_lr is not None else (hp.lr if hp is not None else None)
        if self.sim_lr is None:
            raise SimudyError(f"{self.name}: the threat model withholds the learning rate and sim_lr is not set: "
                              "run the attack (it searches search.lrs) or set sim_lr")
        self.kind = threat.inputs.configured(cfg)
        self.kind.bind(victim.model)
        self.victim, self.threat = victim, threat
        self.target = parameter_change(victim, list(victim.theta0))
        self.terms = [(column, weight, *embedding_index(victim, list(victim.theta0), attribute))
                      for column, attribute in TERMS if (weight := getattr(cfg, f"{column}_weight"))]
        gen = torch.Generator().manual_seed(cfg.seed)
        n = max(1, round(cfg.dummies * self.n_images(threat)))
        x = self.kind.dummies(n, gen, cfg.init_scale)
        labels = self.kind.labels(n, threat.num_classes, gen)
        if cfg.init_images == "natural":
            x = natural_images(threat, labels)
        self.labels = labels.to(device)
        self.tensors = {"images": x.to(device).requires_grad_(True)}
        self.optimizers = [torch.optim.Adam([self.tensors["images"]], lr=cfg.lr, betas=tuple(cfg.betas))]

    def plan(self, step: int) -> TrainingPlan:
        cfg = self.cfg
        clip = step < cfg.clip_fraction * cfg.steps
        return TrainingPlan(
            epochs=cfg.sim_epochs,
            batch_size=self.sim_batch_size,
            lr=self.sim_lr,
            clip_max_norm=cfg.clip_max_norm if clip else None,
            clip_to_norm=cfg.clip_to_norm if clip else None,
            loss=self.threat.loss_kind(),
        )

    def contribution(self) -> torch.Tensor:
        """Each dummy's total-gradient norm over the simulated training (Sec. 4.5), at the final
        images and the plan of the last steps."""
        with matmul_precision(self.cfg.simulator):
            return contributions(self.victim.model, self.victim.theta0, self.kind.model_input(self.images()),
                                 self.labels, self.plan(self.cfg.steps))

    def objective(self, x: torch.Tensor, plan: TrainingPlan) -> tuple[torch.Tensor, dict]:
        sim = pick_simulator(self.cfg.simulator)(self.victim.model, self.victim.theta0, self.kind.model_input(x),
                                                 self.labels, plan)
        change = flatten(sim.grad_sum)
        if self.cfg.loss == "cosine":
            distance = cosine_distance(change, self.target)
        else:
            distance = squared_distance(plan.lr * change, self.target)
        tv = self.kind.prior(x)
        loss = distance + self.cfg.tv_weight * tv
        info = {"distance": distance.item(), "tv": tv.item(), "clipped_steps": sim.clipped_steps}
        for column, weight, index, target in self.terms:
            # 1 − cos: the paper's −β·cos shifted by β, so that the loss stays ≥ 0.
            term = cosine_distance(sim.grad_sum[index].flatten(), target)
            loss = loss + weight * term
            info[column] = term.item()
        return loss, info

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


def embedding_index(victim: Victim, names: list[str], attribute: str) -> tuple[int, torch.Tensor]:
    """Where the embedding the model names by `attribute` sits among the simulated gradients
    (of the parameters `names`), and its own change θ0 − θf: App. C.6's position embedding,
    or a text model's token embeddings."""
    name = getattr(victim.model, attribute, None)
    if name is None:
        kind = ("position embedding (a ViT does)" if attribute == "position_embedding"
                else "token embeddings (a text model does)")
        raise SimudyError(f"{attribute.split('_')[0]}_weight needs a model that names its {kind}; "
                          f"{type(victim.model).__name__} does not")
    return names.index(name), (victim.theta0[name] - victim.thetaf[name]).flatten()


def natural_images(threat: ThreatModel, labels: torch.Tensor) -> torch.Tensor:
    """For each dummy, the next natural image of its class, in the pool's order (Fig. 8)."""
    if threat.natural is None:
        raise SimudyError("simudy: init_images is natural, but the run was given no natural images "
                          "(the reconstruct stage's --natural-images)")
    pool, pool_labels = threat.natural
    index = torch.empty_like(labels)
    for c in labels.unique().tolist():
        slots = labels == c
        have = torch.nonzero(pool_labels == c).flatten()
        if len(have) < int(slots.sum()):
            raise SimudyError(f"simudy: init_images natural needs {int(slots.sum())} natural images of class {c}, "
                              f"the pool holds {len(have)}")
        index[slots] = have[: int(slots.sum())]
    return pool[index].clone()


def _probe_folder(lr: float) -> str:
    return f"search/lr{lr:g}"
