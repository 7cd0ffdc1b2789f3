"""The loop every optimisation-based attack shares: step, log, snapshot, resume.

A subclass sets up the tensors it optimises and its optimisers (`setup`) and takes one step
(`step`); this class runs the steps with a progress bar and a loss log, snapshots the tensors
and optimiser states every `snapshot_every` steps, and resumes a killed run from the last
snapshot so that it ends bit-for-bit where an uninterrupted run would.
"""

from __future__ import annotations

import logging
import math
import time
from abc import abstractmethod
from pathlib import Path

import torch
from tqdm import tqdm

from simudy.attacks.base import Attack, Monitor, Reconstruction, ThreatModel, released
from simudy.devices import pick_device
from simudy.errors import SimudyError
from simudy.models import flatten
from simudy.runstate import RunDir, RunState, fingerprint
from simudy.victim import Victim

log = logging.getLogger(__name__)


class Diverged(SimudyError):
    """A non-finite loss or image: the run cannot go on."""


class IterativeAttack(Attack):
    columns: list[str]  # the loss log's columns besides step, lr and seconds

    @abstractmethod
    def setup(self, victim: Victim, threat: ThreatModel, device: torch.device) -> None:
        """Create `self.tensors` (name -> optimised tensor; "images" among them), `self.labels`
        and `self.optimizers`, seeded from the config."""

    @abstractmethod
    def step(self, step: int) -> dict:
        """One optimisation step; returns its loss-log row (without step and seconds)."""

    def images(self) -> torch.Tensor:
        return self.tensors["images"]

    def readable(self, images: torch.Tensor) -> torch.Tensor:
        """The images as the progress monitor scores them."""
        return images

    def run(self, victim: Victim, threat: ThreatModel, workdir: Path, monitor: Monitor | None = None) -> Reconstruction:
        return self.optimise(self.start(victim, threat, pick_device(self.cfg.device)), threat, workdir, monitor)

    def optimise(self, victim: Victim, threat: ThreatModel, workdir: Path, monitor: Monitor | None = None,
                 until: int | None = None) -> Reconstruction:
        """Run the steps up to `until` (the configured `steps` if None) on the tensors `start`
        set up, resuming from `workdir`'s snapshot: a run stopped early continues later."""
        cfg = self.cfg
        until = cfg.steps if until is None else until
        device = self.images().device
        columns = ["step", *self.columns, "seconds"]
        thetaf = flatten(list(victim.thetaf.values())).cpu()
        key = fingerprint(cfg.model_dump(), sorted(threat.granted), victim.meta, thetaf)
        run = RunDir(workdir, key, columns)
        start, seconds = 0, 0.0
        if (state := run.resume()) is not None:
            start, seconds = state.step, state.seconds
            self._restore(state.tensors)

        bar = tqdm(range(start, until), initial=start, total=until, desc=f"{self.name} n={len(self.images())}",
                   mininterval=2)
        for step in bar:
            t0 = time.perf_counter()
            row = self.step(step)
            seconds += time.perf_counter() - t0
            self._check_finite(step, row, workdir)
            run.record({"step": step + 1, **row, "seconds": round(seconds, 4)})
            bar.set_postfix(loss=f"{row['loss']:.4g}", refresh=False)
            if (step + 1) % cfg.log_every == 0:
                parts = " ".join(f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float))
                log.info("%s step %d/%d %s %.3f s/step", self.name, step + 1, cfg.steps, parts, seconds / (step + 1))
            out_of_time = cfg.max_minutes is not None and seconds >= 60 * cfg.max_minutes
            if (step + 1) % cfg.snapshot_every == 0 or step + 1 == until or out_of_time:
                images = self.images().detach().cpu()
                run.snapshot(RunState(step + 1, seconds, self._capture()), images)
                if monitor is not None:
                    scores = " ".join(f"{k} {v:.4f}" for k, v in monitor(self.readable(images)).items())
                    log.info("%s step %d: %s (against the truth; the attack does not see it)", self.name, step + 1,
                             scores)
            if out_of_time:
                log.info("%s: time budget of %g min used up after %d of %d steps", self.name, cfg.max_minutes,
                         step + 1, cfg.steps)
                break
        bar.close()
        rows = run.rows()
        done = int(rows[-1]["step"]) if rows else start
        info = {"steps": done, "planned_steps": cfg.steps, "seconds": seconds, "device": str(device),
                "n_images": len(self.images()), "final_loss": float(rows[-1]["loss"]) if rows else None,
                "loss_rows": rows}
        labels = None if self.labels is None else self.labels.cpu()
        extras = self._history(run, done) if cfg.history_every else {}
        return Reconstruction(images=self.images().detach().cpu(), labels=labels, info=info, extras=extras)

    def _history(self, run: RunDir, done: int) -> dict[str, torch.Tensor]:
        """The initial images and the snapshots every `history_every` steps up to `done`:
        `history` [k, n, C, H, W] and `history_steps` [k]."""
        steps = list(range(0, done + 1, self.cfg.history_every))
        images = [self.initial_images, *(run.snapshot_images(s) for s in steps[1:])]
        return {"history": torch.stack(images), "history_steps": torch.tensor(steps)}

    def start(self, victim: Victim, threat: ThreatModel, device: torch.device) -> Victim:
        """Check the threat model, then set up the tensors and optimisers on `device` for the
        victim as released; returns that victim."""
        self.check(threat)
        victim = released(victim, threat).to(device)
        self.tensors: dict[str, torch.Tensor] = {}
        self.labels: torch.Tensor | None = None
        self.optimizers: list[torch.optim.Optimizer] = []
        self.setup(victim, threat, device)
        self.initial_images = self.images().detach().cpu().clone()
        return victim

    def _check_finite(self, step: int, row: dict, workdir: Path) -> None:
        """Stop at the first non-finite loss or image: every later step would only spread NaN,
        and the snapshot on disk is the last good state."""
        bad = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
        if not bad and torch.isfinite(self.images()).all():
            return
        what = f"{bad[0]} is {row[bad[0]]}" if bad else "the images hold NaN or infinite values"
        raise Diverged(f"{self.name}: {what} at step {step + 1}; the optimisation diverged (lower its lr or "
                       f"init_scale). The last good snapshot stays in {workdir}")

    def _capture(self) -> dict[str, torch.Tensor]:
        out = {f"tensor.{k}": v.detach().cpu() for k, v in self.tensors.items()}
        for i, opt in enumerate(self.optimizers):
            for p, state in opt.state_dict()["state"].items():
                out |= {f"opt.{i}.{p}.{k}": torch.as_tensor(v).cpu() for k, v in state.items()}
        return out

    def _restore(self, saved: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for k, v in self.tensors.items():
                v.copy_(saved[f"tensor.{k}"].to(v.device))
        for i, opt in enumerate(self.optimizers):
            sd = opt.state_dict()
            state: dict[int, dict] = {}
            for key, value in saved.items():
                if key.startswith(f"opt.{i}."):
                    _, _, p, name = key.split(".", 3)
                    state.setdefault(int(p), {})[name] = value
            opt.load_state_dict({**sd, "state": state})
