"""The attack interface: what the threat model grants in, reconstructed inputs out.

An attack receives the released model (architecture and θf), θ0 only if the threat model
grants it, and a `ThreatModel` saying what else is known. It declares what it needs
(`requires`); asking for more than the threat model grants is an error, not a silent leak.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib import import_module
from pathlib import Path

import torch

from simudy.config import AttackConfig, ThreatConfig
from simudy.errors import SimudyError
from simudy.inputs import InputKind, of_victim
from simudy.losses import LossKind
from simudy.victim import Victim

GRANTS = ("theta0", "hyperparams", "dataset_size")


@dataclass(frozen=True)
class TrainingHyperparams:
    epochs: int
    batch_size: int
    lr: float
    loss: LossKind


@dataclass(frozen=True)
class ThreatModel:
    """What the attacker knows besides θf. Always: the input kind (for images their shape and
    normalisation), the classes and the model's outputs. The rest only where `granted` says so
    (None otherwise)."""

    inputs: InputKind
    image_shape: tuple[int, int, int] | None
    num_classes: int
    num_outputs: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    granted: frozenset[str]
    n_images: int | None
    hyperparams: TrainingHyperparams | None
    # Natural images the attacker holds, none of them the victim's own (normalised [N, C, H, W]
    # and their classes [N]), where the run was given some: a prior, not a leak.
    natural: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def from_victim(cls, victim: Victim, grants: ThreatConfig) -> ThreatModel:
        t = victim.training
        granted = frozenset(g for g in GRANTS if getattr(grants, g))
        inputs = of_victim(victim, "theta0" in granted)
        return cls(
            inputs=inputs,
            image_shape=getattr(inputs, "shape", None),
            num_classes=victim.num_classes,
            num_outputs=victim.num_outputs,
            mean=tuple(victim.meta.get("mean", ())),
            std=tuple(victim.meta.get("std", ())),
            granted=granted,
            n_images=int(victim.meta["n_images"]) if "dataset_size" in granted else None,
            hyperparams=TrainingHyperparams(t["epochs"], t["batch_size"], t["lr"], t.get("loss", "cross_entropy"))
            if "hyperparams" in granted else None,
        )

    def loss_kind(self) -> LossKind:
        """The victim's training loss: as granted, else what its outputs imply."""
        if self.hyperparams is not None:
            return self.hyperparams.loss
        return "logistic" if self.num_outputs == 1 else "cross_entropy"

    def pixel_box(self, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The valid pixel range [0, 1] in normalised space, per channel, shaped [1, C, 1, 1]."""
        mean = torch.tensor(self.mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, -1, 1, 1)
        return -mean / std, (1 - mean) / std


def released(victim: Victim, threat: ThreatModel) -> Victim:
    """The victim as the attacker sees it: without θ0 unless the threat model grants it."""
    return victim if "theta0" in threat.granted else replace(victim, theta0=None)


Monitor = Callable[[torch.Tensor], dict[str, float]]


@dataclass
class Reconstruction:
    # [n, C, H, W] in the victim's normalised space (the input kind's optimised tensor), on the CPU
    images: torch.Tensor
    labels: torch.Tensor | None  # [n] class indices where the attack assigns or infers them
    info: dict  # steps, seconds, final loss, ...
    # Per-image measures saved beside the images, e.g. "contribution" [n] (SimuDy, Sec. 4.5).
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class Attack(ABC):
    name: str
    inputs: tuple[str, ...] = ("image",)  # the input kinds it attacks

    def __init__(self, cfg: AttackConfig):
        self.cfg = cfg

    def requires(self) -> set[str]:
        """What the attack needs from the threat model (see GRANTS)."""
        return set() if self.cfg.n_images is not None else {"dataset_size"}

    def check(self, threat: ThreatModel) -> None:
        if threat.inputs.name not in self.inputs:
            raise SimudyError(f"attack {self.name!r} reconstructs {' and '.join(self.inputs)} inputs, "
                              f"not {threat.inputs.name}")
        missing = sorted(self.requires() - threat.granted)
        if missing:
            raise SimudyError(f"attack {self.name!r} needs {missing}, which the threat model does not grant "
                              "(configure the attack to do without, or grant it under reconstruct.threat)")

    def n_images(self, threat: ThreatModel) -> int:
        return threat.n_images if self.cfg.n_images is None else self.cfg.n_images

    @abstractmethod
    def run(self, victim: Victim, threat: ThreatModel, workdir: Path, monitor: Monitor | None = None) -> Reconstruction:
        """Reconstruct; `workdir` keeps snapshots so that a killed run resumes. `monitor`, if
        given, scores the current images at every snapshot for the log (e.g. SSIM against the
        truth); the attack never sees what it returns."""


# Each attack's module, imported on first use: a run loads only its own attack's code, so the
# pipeline can tell which source files a reconstruction depends on (simudy.lineage).
MODULES = {
    "simudy": "simudy.attacks.simudy",
    "loo": "simudy.attacks.loo",
    "kkt": "simudy.attacks.kkt",
    "weighted_ce": "simudy.attacks.authors",
    "gradinv": "simudy.attacks.gradinv",
}
ATTACKS: dict[str, type[Attack]] = {}


def register(cls: type[Attack]) -> type[Attack]:
    ATTACKS[cls.name] = cls
    return cls


def attack_class(name: str) -> type[Attack]:
    if name not in MODULES:
        raise SimudyError(f"unknown attack {name!r}; known: {sorted(MODULES)}")
    import_module(MODULES[name])
    return ATTACKS[name]


def get_attack(cfg: AttackConfig) -> Attack:
    return attack_class(cfg.attack)(cfg)

