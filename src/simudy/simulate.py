"""The differentiable training simulator (Alg. 1, lines 6-13).

Training is replayed functionally from θ0 on (dummy) images: every simulated SGD step's
gradient is taken with `create_graph=True`, so the simulated final parameters, and any loss
on them, can be differentiated with respect to the images. The model stays in eval mode, as
in the victim's training, so BatchNorm is the fixed affine map of θ0's running statistics.

`SimulatorConfig` picks how it is computed, never what: rematerialisation keeps only segment
boundaries and rebuilds a segment's graph during the backward pass (memory for time), and the
layout and precision switches trade exactness for speed. `simulate_reference.py` keeps the
plain unrolled loop to measure and test against.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

from simudy.config import SimulatorConfig
from simudy.losses import LossKind, training_loss

PAPER = SimulatorConfig()  # Alg. 1 as written


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

    def batches(self, n: int) -> list[slice]:
        one_epoch = [slice(start, start + self.batch_size) for start in range(0, n, self.batch_size)]
        return one_epoch * self.epochs


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
    options: SimulatorConfig = PAPER,
) -> Simulation:
    """Run `plan` from `theta0` on `images` in their given order (shuffle off)."""
    names = list(theta0)
    state = [_layout(v.detach(), options).requires_grad_(True) for v in theta0.values()]
    state += [torch.zeros_like(p) for p in state]  # the running Σ of step gradients
    x = _layout(images, options)
    batches = plan.batches(len(images))
    segment = options.remat or len(batches)
    clipped = 0
    for first in range(0, len(batches), segment):
        run = _Segment(model, names, labels, plan, options, batches[first : first + segment], create_graph)
        if options.remat and create_graph:
            out = checkpoint(run, x, *state, use_reentrant=False)
        else:
            out = run(x, *state)
        state, clipped = list(out[:-1]), clipped + out[-1]
    k = len(names)
    return Simulation(grad_sum=state[k:], final=dict(zip(names, state[:k])), clipped_steps=clipped)


@dataclass
class _Segment:
    """Consecutive simulated steps as one function of (images, θ, Σ grads), so that
    `checkpoint` can drop its graph after the forward pass and rebuild it on demand."""

    model: nn.Module
    names: list[str]
    labels: torch.Tensor
    plan: TrainingPlan
    options: SimulatorConfig
    batches: list[slice]
    create_graph: bool

    def __call__(self, x: torch.Tensor, *state: torch.Tensor) -> tuple:
        k, plan = len(self.names), self.plan
        params, grad_sum = list(state[:k]), list(state[k:])
        buffers = dict(self.model.named_buffers())
        clipped = 0
        for batch in self.batches:
            with _autocast(self.options, x.device):
                out = functional_call(self.model, (dict(zip(self.names, params)), buffers), (x[batch],))
            if out.dtype == torch.bfloat16:
                out = out.float()  # the loss and its gradient in full precision
            loss = training_loss(plan.loss, out, self.labels[batch])
            grads = torch.autograd.grad(loss, params, create_graph=self.create_graph)
            grads, was_clipped = clip_step(grads, plan)
            clipped += was_clipped
            params = [p - plan.lr * g for p, g in zip(params, grads)]
            grad_sum = [s + g for s, g in zip(grad_sum, grads)]
        return (*params, *grad_sum, clipped)


def clip_step(grads: tuple[torch.Tensor, ...], plan: TrainingPlan) -> tuple[list[torch.Tensor], bool]:
    if plan.clip_max_norm is None:
        return list(grads), False
    norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
    if norm.item() <= plan.clip_max_norm:
        return list(grads), False
    scale = plan.clip_to_norm / norm
    return [g * scale for g in grads], True


def _layout(t: torch.Tensor, options: SimulatorConfig) -> torch.Tensor:
    if options.channels_last and t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    return t


def _autocast(options: SimulatorConfig, device: torch.device) -> contextlib.AbstractContextManager:
    if options.precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def matmul_precision(options: SimulatorConfig):
    """TensorFloat-32 for everything inside, the outer backward pass included (CUDA only)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    if options.precision == "tf32":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def flatten(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])
