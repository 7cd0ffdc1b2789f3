"""The victims' training losses, shared by real training and its simulation."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

LossKind = Literal["cross_entropy", "logistic"]


def training_loss(kind: LossKind, out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean loss of a batch."""
    return per_sample_loss(kind, out, labels).mean()


def per_sample_loss(kind: LossKind, out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`logistic` is Haim et al.'s binary loss on one output: log(1 + exp(−y·f(x))) with
    y = −1 for class 0 and +1 for class 1."""
    if kind == "logistic":
        return F.softplus(-signs(labels) * out.squeeze(1))
    return F.cross_entropy(out, labels, reduction="none")


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
