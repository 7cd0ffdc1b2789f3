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

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from simudy.checkpoints import State, check_compatible, load_into, load_weights
from simudy.errors import SimudyError
from simudy.io import read_json
from simudy.models import build_model

META_SCHEMA = 1


@dataclass
class Victim:
    meta: dict
    model: nn.Module  # the architecture, in eval mode, holding θ0's buffers
    theta0: State  # trainable parameters only
    thetaf: State

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.meta["image_shape"])

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def training(self) -> dict:
        return self.meta["training"]


def build_from_meta(meta: dict) -> nn.Module:
    return build_model(meta["arch"], meta["image_shape"], meta["num_classes"], **meta.get("model_kwargs", {}))


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
    return torch.cat([(victim.theta0[n] - victim.thetaf[n]).reshape(-1) for n in victim.theta0])
