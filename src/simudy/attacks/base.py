"""The attack interface: what the threat model grants in, reconstructed images out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import torch

from simudy.config import ReconstructConfig
from simudy.errors import SimudyError
from simudy.victim import Victim


@dataclass(frozen=True)
class TrainingHyperparams:
    epochs: int
    batch_size: int
    lr: float


@dataclass(frozen=True)
class ThreatModel:
    """What the attacker knows besides θ0 and θf (the paper's protocol: the dataset size,
    the image shape, the classes and, unless searched for, the training hyper-parameters)."""

    n_images: int
    image_shape: tuple[int, int, int]
    num_classes: int
    hyperparams: TrainingHyperparams | None

    @classmethod
    def from_victim(cls, victim: Victim) -> ThreatModel:
        t = victim.training
        hp = TrainingHyperparams(t["epochs"], t["batch_size"], t["lr"])
        return cls(int(victim.meta["n_images"]), victim.image_shape, victim.num_classes, hp)


@dataclass
class Reconstruction:
    images: torch.Tensor  # [n, C, H, W] in the victim's normalised space, on the CPU
    labels: torch.Tensor | None  # [n] class indices where the attack assigns or infers them
    info: dict  # steps, seconds, final loss, ...


class Attack(ABC):
    name: str

    def __init__(self, cfg: ReconstructConfig):
        self.cfg = cfg

    @abstractmethod
    def run(self, victim: Victim, threat: ThreatModel, workdir: Path) -> Reconstruction:
        """Reconstruct; `workdir` keeps snapshots so that a killed run resumes."""


ATTACKS: dict[str, type[Attack]] = {}


def register(cls: type[Attack]) -> type[Attack]:
    ATTACKS[cls.name] = cls
    return cls


def get_attack(cfg: ReconstructConfig) -> Attack:
    if cfg.attack not in ATTACKS:
        raise SimudyError(f"unknown attack {cfg.attack!r}; known: {sorted(ATTACKS)}")
    return ATTACKS[cfg.attack](cfg)
