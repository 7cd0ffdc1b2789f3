"""Reconstruction attacks, interchangeable behind `Attack` and looked up by name."""

from simudy.attacks.base import ATTACKS, Attack, Reconstruction, ThreatModel, get_attack
from simudy.attacks.simudy import SimuDy

__all__ = ["ATTACKS", "Attack", "Reconstruction", "SimuDy", "ThreatModel", "get_attack"]
