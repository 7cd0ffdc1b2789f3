"""The victims' training losses, shared by real training and its simulation."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

LossKind = Literal["cross_entropy", "logistic"]


def training_loss(kind: LossKind, out: torch.Tensor, labels: torch.Tensor, explicit: bool = False) -> torch.Tensor:
    """Mean loss of a batch. `explicit`: cross-entropy from elementary ops, the same value,
    for forward-mode AD under a backward pass (see `explicit_cross_entropy`)."""
    return per_sample_loss(kind, out, labels, explicit).mean()


def per_sample_loss(kind: LossKind, out: torch.Tensor, labels: torch.Tensor, explicit: bool = False) -> torch.Tensor:
    """`logistic` is Haim et al.'s binary loss on one output: log(1 + exp(−y·f(x))) with
    y = −1 for class 0 and +1 for class 1."""
    if kind == "logistic":
        return F.softplus(-signs(labels) * out.squeeze(1))
    if explicit:
        return explicit_cross_entropy(out, labels)
    return F.cross_entropy(out, labels, reduction="none")


def explicit_cross_entropy(out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log Σ_j exp(f_j) − f_y, shifted by the (constant) row maximum for stability. torch's own
    softmax-family forward-mode derivatives modify a tensor that the backward pass needs, so
    differentiating them in reverse fails (pytorch/pytorch#162350)."""
    shifted = out - out.detach().amax(1, keepdim=True)
    return shifted.exp().sum(1).log() - shifted.gather(1, labels[:, None])[:, 0]


def margins(out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample margin: y·f(x) for one output (Haim et al.), else f_y(x) − max_{j≠y} f_j(x)
    (Buzaglo et al.)."""
    if out.shape[1] == 1:
        return signs(labels) * out[:, 0]
    own = out.gather(1, labels[:, None])[:, 0]
    others = out.masked_fill(F.one_hot(labels, out.shape[1]).bool(), float("-inf")).amax(1)
    return own - others


def signs(labels: torch.Tensor) -> torch.Tensor:
    """Class indices {0, 1} as the labels {−1, +1} of a binary model."""
    return 2.0 * labels.to(torch.get_default_dtype()) - 1.0
