"""The differentiable training simulator (Alg. 1, lines 6-13).

Training is replayed functionally from θ0 on (dummy) images: every simulated SGD step's
gradient is taken with `create_graph=True`, so the simulated final parameters, and any loss
on them, can be differentiated with respect to the images. The model stays in eval mode, as
in the victim's training, so BatchNorm is the fixed affine map of θ0's running statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from simudy.losses import LossKind, training_loss


@dataclass(frozen=True)
class TrainingPlan:
    """What the simulation replays: epochs over fixed-order batches of plain SGD."""

    epochs: int
    batch_size: int
    lr: float
    # A step whose gradient norm exceeds `clip_max_norm` is rescaled to `clip_to_norm`
    # (the authors' in-simulation clipping); None disables it.
    clip_max_norm: float | None = None
    clip_to_norm: float | None = None
    loss: LossKind = "cross_entropy"


@dataclass
class Simulation:
    grad_sum: list[torch.Tensor]  # Σ of the (clipped) step gradients, per parameter
    final: dict[str, torch.Tensor]  # the simulated θ̂f
    clipped_steps: int


def simulate(
    model: nn.Module,
    theta0: dict[str, torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    plan: TrainingPlan,
    create_graph: bool = True,
) -> Simulation:
    """Run `plan` from `theta0` on `images` in their given order (shuffle off)."""
    buffers = dict(model.named_buffers())
    params = {k: v.detach().requires_grad_(True) for k, v in theta0.items()}
    grad_sum = [torch.zeros_like(p) for p in params.values()]
    clipped = 0
    for _ in range(plan.epochs):
        for start in range(0, len(images), plan.batch_size):
            xb, yb = images[start : start + plan.batch_size], labels[start : start + plan.batch_size]
            out = functional_call(model, (params, buffers), (xb,))
            loss = training_loss(plan.loss, out, yb)
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
            grads, was_clipped = _clip(grads, plan)
            clipped += was_clipped
            params = {n: p - plan.lr * g for (n, p), g in zip(params.items(), grads)}
            grad_sum = [s + g for s, g in zip(grad_sum, grads)]
    return Simulation(grad_sum=grad_sum, final=params, clipped_steps=clipped)


def _clip(grads: tuple[torch.Tensor, ...], plan: TrainingPlan) -> tuple[list[torch.Tensor], bool]:
    if plan.clip_max_norm is None:
        return list(grads), False
    norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
    if norm.item() <= plan.clip_max_norm:
        return list(grads), False
    scale = plan.clip_to_norm / norm
    return [g * scale for g in grads], True


def flatten(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])
