"""Snapshots of a long optimisation, so that a killed run resumes where it stopped and ends
bit-for-bit where an uninterrupted one would.

A work directory holds `resume.safetensors` (the optimised tensors, the optimiser's state and
the step), `loss.partial.csv` (one row per step up to the snapshot) and `snapshots/` (the
images every N steps, for plots of the reconstruction over time). A fingerprint of the
configuration and the victim guards against resuming a different run. The resume state outlives
the end of the optimisation until the stage's outputs are written (`discard`): a stage that
fails to write them (a full disk) resumes at its last step instead of recomputing.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from simudy.checkpoints import save_weights
from simudy.errors import SimudyError
from simudy.io import atomic_path

log = logging.getLogger(__name__)

STATE_FILE = "resume.safetensors"
LOG_FILE = "loss.partial.csv"


def fingerprint(*parts: object) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.numpy().tobytes() if isinstance(p, torch.Tensor) else json.dumps(p, sort_keys=True).encode())
    return h.hexdigest()


@dataclass
class RunState:
    step: int
    seconds: float
    tensors: dict[str, torch.Tensor]  # the optimised tensors and the optimiser state


@dataclass
class RunDir:
    path: Path
    fingerprint: str
    columns: list[str]
    pending: list[dict] = field(default_factory=list)

    def resume(self) -> RunState | None:
        state_path = self.path / STATE_FILE
        if not state_path.exists():
            self._clear()
            return None
        with safe_open(str(state_path), "pt") as fh:
            meta = fh.metadata() or {}
        if meta.get("fingerprint") != self.fingerprint:
            log.warning("%s belongs to another configuration or victim; starting afresh", state_path)
            self._clear()
            return None
        step = int(meta["step"])
        self._truncate_log(step)
        log.info("resuming from the snapshot at step %d", step)
        return RunState(step=step, seconds=float(meta["seconds"]), tensors=load_file(str(state_path)))

    def record(self, row: dict) -> None:
        self.pending.append(row)

    def snapshot(self, state: RunState, images: torch.Tensor) -> None:
        """Flush the loss rows, then write the resumable state (in that order: rows past the
        state's step are dropped on resume)."""
        self.path.mkdir(parents=True, exist_ok=True)
        log_path = self.path / LOG_FILE
        new = not log_path.exists()
        with open(log_path, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=self.columns)
            if new:
                w.writeheader()
            w.writerows(self.pending)
        self.pending.clear()
        save_weights(self.path / "snapshots" / f"images_{state.step:07d}.safetensors", {"images": images})
        meta = {"fingerprint": self.fingerprint, "step": str(state.step), "seconds": repr(state.seconds)}
        save_weights(self.path / STATE_FILE, state.tensors, metadata=meta)

    def snapshot_images(self, step: int) -> torch.Tensor:
        path = self.path / "snapshots" / f"images_{step:07d}.safetensors"
        if not path.exists():
            raise SimudyError(f"{path}: not found; the run's image snapshot at step {step} is gone")
        return load_file(str(path))["images"]

    def _clear(self) -> None:
        (self.path / STATE_FILE).unlink(missing_ok=True)
        (self.path / LOG_FILE).unlink(missing_ok=True)
        shutil.rmtree(self.path / "snapshots", ignore_errors=True)

    def rows(self) -> list[dict]:
        path = self.path / LOG_FILE
        if not path.exists():
            return []
        with open(path, newline="") as fh:
            return list(csv.DictReader(fh))

    def _truncate_log(self, step: int) -> None:
        kept = [r for r in self.rows() if int(r["step"]) <= step]
        with atomic_path(self.path / LOG_FILE) as tmp, open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=self.columns)
            w.writeheader()
            w.writerows(kept)


def discard(workdir: str | Path) -> None:
    """The run's outputs are written: drop its resume states (the run's, and those of any runs
    inside, such as a learning-rate search's probes), so that running it again recomputes. The
    loss logs and the image snapshots stay for plots."""
    for state in Path(workdir).glob(f"**/{STATE_FILE}"):
        state.unlink(missing_ok=True)
