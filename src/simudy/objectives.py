"""Distances between parameter changes, and image priors."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 − cos(a, b): Eq. 5 up to the constant, so that a perfect match scores 0."""
    return 1.0 - F.cosine_similarity(a, b, dim=0)


def squared_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).pow(2).sum()


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between vertical plus horizontal neighbours."""
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    return dx + dy


def high_frequency(x: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between vertical plus horizontal neighbours: the energy of the
    highest spatial frequencies (Loo et al.'s prior for fine-tuned models)."""
    dy = (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean()
    dx = (x[..., :, 1:] - x[..., :, :-1]).pow(2).mean()
    return dx + dy


def box_penalty(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Σ of squared excursions outside [lo, hi] (the valid pixel range)."""
    return ((x - hi).relu().pow(2) + (lo - x).relu().pow(2)).sum()
