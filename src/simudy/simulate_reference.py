"""The straightforward simulator, kept as the yardstick for `simulate.py` (tests and `bench/`).

It is Alg. 1, lines 6-13, as the paper reads: one functional call per simulated batch, every
step's gradient taken with `create_graph=True`, and one graph over the whole simulated
training. Nothing here is tuned; do not optimise it.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from simudy.losses import training_loss
from simudy.simulate import Simulation, TrainingPlan, clip_step


def simulate_reference(
    model: nn.Module,
    theta0: dict[str, torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    plan: TrainingPlan,
) -> Simulation:
    buffers = dict(model.named_buffers())
    params = {k: v.detach().requires_grad_(True) for k, v in theta0.items()}
    grad_sum = [torch.zeros_like(p) for p in params.values()]
    clipped = 0
    for _ in range(plan.epochs):
        for start in range(0, len(images), plan.batch_size):
            xb, yb = images[start : start + plan.batch_size], labels[start : start + plan.batch_size]
            out = functional_call(model, (params, buffers), (xb,))
            loss = training_loss(plan.loss, out, yb)
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
            grads, was_clipped = clip_step(grads, plan)
            clipped += was_clipped
            params = {n: p - plan.lr * g for (n, p), g in zip(params.items(), grads)}
            grad_sum = [s + g for s, g in zip(grad_sum, grads)]
    return Simulation(grad_sum=grad_sum, final=params, clipped_steps=clipped)
