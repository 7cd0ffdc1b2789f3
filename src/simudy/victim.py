"""The victim bundle: what an attacker is given, and the ground truth kept for evaluation.

A victim directory holds

    theta0.safetensors   initial parameters (and BatchNorm buffers)
    thetaf.safetensors   final parameters
    victim.json          architecture, image shape, classes, normalisation, training
                         hyper-parameters, subset indices and seeds
    truth.npz            the training subset, in the canonical dataset format (evaluation only)

To attack your own model, write these files yourself: `truth.npz` is needed only for scoring.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from simudy.checkpoints import State, check_compatible, load_into, load_weights, save_weights
from simudy.config import ExperimentConfig
from simudy.data import Dataset, load_dataset, save_dataset, select_subset
from simudy.errors import SimudyError
from simudy.io import read_json, write_json
from simudy.models import build_model, centre_on, flatten
from simudy.train import finetune

META_SCHEMA = 1


@dataclass
class Victim:
    meta: dict
    model: nn.Module  # the architecture, in eval mode, holding θ0's buffers
    theta0: State | None  # trainable parameters only; None where the threat model withholds θ0
    thetaf: State

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.meta["image_shape"])

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def num_outputs(self) -> int:
        return int(self.meta.get("num_outputs", self.num_classes))

    @property
    def training(self) -> dict:
        return self.meta["training"]

    def to(self, device: torch.device) -> Victim:
        move = lambda state: state and {k: v.to(device) for k, v in state.items()}  # noqa: E731
        return replace(self, model=self.model.to(device), theta0=move(self.theta0), thetaf=move(self.thetaf))


def make_victim(cfg: ExperimentConfig, dataset: str | Path, init_dir: str | Path, out_dir: str | Path) -> dict:
    """The `finetune-victim` stage: train θ0 on the victim subset and write the bundle."""
    init_dir, out_dir = Path(init_dir), Path(out_dir)
    ds = load_dataset(dataset, split="train")
    if cfg.victim.groups:
        ds = ds.grouped(cfg.victim.groups)
    info = read_json(init_dir / "init.json")
    model = load_into(build_from_meta(info), load_weights(init_dir / "theta0.safetensors"),
                      init_dir / "theta0.safetensors")
    rows = select_subset(ds.labels, cfg.victim.per_class, cfg.victim.offset, len(ds.class_names))
    rows = rows[: cfg.victim.max_images]
    images = ds.normalised(rows)
    centre_on(model, images, ds.std)  # part of θ0: the model's input map, not trained
    theta0 = {k: v.clone() for k, v in model.state_dict().items()}
    losses = finetune(model, images, torch.from_numpy(ds.labels[rows]), cfg.victim)
    meta = _metadata(cfg, info, ds, rows, losses)
    save_weights(out_dir / "theta0.safetensors", theta0)
    save_weights(out_dir / "thetaf.safetensors", model.state_dict())
    save_dataset(out_dir / "truth.npz", ds.take(rows))
    write_json(out_dir / "victim.json", meta)  # last: its presence marks a complete bundle
    return meta


def _metadata(cfg: ExperimentConfig, info: dict, ds: Dataset, rows, losses: list[float]) -> dict:
    v = cfg.victim
    return {
        "schema": META_SCHEMA,
        **{k: info[k] for k in ("arch", "model_kwargs", "image_shape", "num_outputs")},
        "num_classes": len(ds.class_names),
        "class_names": ds.class_names,
        "mean": ds.mean.tolist(),
        "std": ds.std.tolist(),
        "n_images": len(rows),
        # `epochs` is what ran: fewer than configured when training stopped at `stop_loss`.
        "training": {"epochs": len(losses), "batch_size": v.batch_size, "lr": v.lr, "optimizer": "sgd",
                     "momentum": 0.0, "weight_decay": 0.0, "shuffle": False, "model_mode": "eval",
                     "loss": v.loss},
        "subset": {"dataset": cfg.dataset, "split": "train", "per_class": v.per_class, "offset": v.offset,
                   "indices": rows.tolist(), "source_ids": ds.source_ids[rows].tolist()},
        "init": info["init"],
        "epoch_losses": losses,
    }


def build_from_meta(meta: dict) -> nn.Module:
    outputs = meta.get("num_outputs", meta.get("num_classes"))
    return build_model(meta["arch"], meta["image_shape"], outputs, **meta.get("model_kwargs", {}))


def load_victim(victim_dir: str | Path) -> Victim:
    victim_dir = Path(victim_dir)
    meta = read_json(victim_dir / "victim.json")
    missing = [k for k in ("arch", "image_shape", "num_classes", "training") if k not in meta]
    if missing:
        raise SimudyError(f"{victim_dir / 'victim.json'}: missing field(s) {missing}")
    p0, pf = victim_dir / "theta0.safetensors", victim_dir / "thetaf.safetensors"
    s0, sf = load_weights(p0), load_weights(pf)
    check_compatible(s0, sf, p0, pf)
    model = load_into(build_from_meta(meta), s0, p0).eval()
    names = [n for n, _ in model.named_parameters()]
    return Victim(meta=meta, model=model, theta0={n: s0[n] for n in names}, thetaf={n: sf[n] for n in names})


def parameter_change(victim: Victim) -> torch.Tensor:
    """θ0 − θf flattened over the trainable parameters, in `named_parameters` order."""
    if victim.theta0 is None:
        raise SimudyError("the parameter change needs θ0, which this threat model withholds")
    return flatten([victim.theta0[n] - victim.thetaf[n] for n in victim.theta0])
