"""Reconstruction attacks, interchangeable behind `Attack` and looked up by name. Each attack's
module is imported only when it is used (see `base.MODULES`)."""

from simudy.attacks.base import MODULES, Attack, Reconstruction, ThreatModel, attack_class, get_attack

_CLASSES = {"SimuDy": "simudy", "Loo": "loo", "KKT": "kkt", "WeightedCE": "weighted_ce", "GradientInversion": "gradinv"}

__all__ = ["MODULES", "Attack", "Reconstruction", "ThreatModel", "attack_class", "get_attack", *_CLASSES]


def __getattr__(name: str):
    if name in _CLASSES:
        return attack_class(_CLASSES[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
