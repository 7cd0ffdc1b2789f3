"""Reconstruction attacks, interchangeable behind `Attack` and looked up by name."""

from simudy.attacks.authors import WeightedCE
from simudy.attacks.base import ATTACKS, Attack, Reconstruction, ThreatModel, get_attack
from simudy.attacks.gradinv import GradientInversion
from simudy.attacks.kkt import KKT
from simudy.attacks.loo import Loo
from simudy.attacks.simudy import SimuDy

__all__ = ["ATTACKS", "KKT", "Attack", "GradientInversion", "Loo", "Reconstruction", "SimuDy", "ThreatModel",
           "WeightedCE", "get_attack"]
