"""The simulate-and-reconstruct stage: run one of an experiment's attacks on a victim bundle and
write `reconstruction.safetensors` (images in normalised space, and labels where the attack
assigns them), `loss.csv` and `run.json`. Where the victim bundle holds the training images,
a `monitor` (the CLI passes pairing's SSIM) logs the mean SSIM at every snapshot; the attack
itself never sees them."""

from __future__ import annotations

import csv
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import torch

from simudy import runstate
from simudy.attacks import ThreatModel, get_attack
from simudy.attacks.base import Monitor
from simudy.checkpoints import save_weights
from simudy.config import AnyAttack, ReconstructConfig, ThreatConfig
from simudy.data import load_dataset
from simudy.errors import SimudyError
from simudy.io import atomic_path, write_json
from simudy.victim import load_victim


def reconstruct(cfg: ReconstructConfig, method: str, victim_dir: str | Path, out_dir: str | Path,
                work_dir: str | Path, monitor: Monitor | None = None, natural: str | Path | None = None) -> dict:
    return run_attack(cfg.method(method), cfg.threat, method, victim_dir, out_dir, work_dir, monitor, natural)


def run_attack(attack_cfg: AnyAttack, threat: ThreatConfig, method: str, victim_dir: str | Path,
               out_dir: str | Path, work_dir: str | Path, monitor: Monitor | None = None,
               natural: str | Path | None = None) -> dict:
    """Run one configured attack on a victim bundle and write its outputs to `out_dir`;
    `natural`: a dataset file whose test split the attacker holds as natural images."""
    victim = load_victim(victim_dir)
    attack = get_attack(attack_cfg)
    known = ThreatModel.from_victim(victim, threat)
    if natural is not None:
        known = replace(known, natural=natural_pool(natural, victim.meta.get("class_names")))
    result = attack.run(victim, known, Path(work_dir), monitor)
    rows = result.info.pop("loss_rows")
    tensors = {"images": result.images, **result.extras}
    if result.labels is not None:
        tensors["labels"] = result.labels
    info = {"method": method, "attack": attack.name, **result.info, "threads": torch.get_num_threads(),
            "seconds_per_step": result.info["seconds"] / max(1, result.info["steps"])}
    _write_outputs(Path(out_dir), rows, tensors, info)
    runstate.discard(work_dir)
    return info


def natural_pool(path: str | Path, class_names: list[str] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The test split of a dataset file, normalised, with its labels in the victim's classes
    (by name; images of other classes are left out). The victims train on the train split, so
    none of these is a victim's own image."""
    ds = load_dataset(path, split="test")
    if class_names is not None and class_names != ds.class_names:
        unknown = sorted(set(class_names) - set(ds.class_names))
        if unknown:
            raise SimudyError(f"{path}: the victim's classes {unknown} are not among the natural images' "
                              f"classes {ds.class_names}")
        ds = ds.grouped({name: [name] for name in class_names})
    return ds.normalised(), torch.from_numpy(ds.labels)


def _write_outputs(out_dir: Path, rows: list[dict], tensors: dict[str, torch.Tensor], info: dict) -> None:
    """All three outputs, or none: each is written in full before any is moved into place."""
    with ExitStack() as stack:
        loss, images, run = (stack.enter_context(atomic_path(out_dir / name))
                             for name in ("loss.csv", "reconstruction.safetensors", "run.json"))
        with open(loss, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["step"])
            writer.writeheader()
            writer.writerows(rows)
        save_weights(images, tensors)
        write_json(run, info)
