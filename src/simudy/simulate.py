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
    params = [_layout(v.detach(), options) for v in theta0.values()]
    x = _layout(images, options)
    steps = _Steps(model, names, labels, plan, options)
    batches = plan.batches(len(images))
    if options.remat and create_graph:
        segments = [batches[i : i + options.remat] for i in range(0, len(batches), options.remat)]
        counts: list[int] = []
        out = _Rematerialised.apply(steps, segments, counts, x, *params)
        final, grad_sum, clipped = list(out[: len(names)]), list(out[len(names) :]), sum(counts)
    else:
        final, grad_sum, clipped = steps(batches, x, [p.requires_grad_(True) for p in params], create_graph)
    return Simulation(grad_sum=grad_sum, final=dict(zip(names, final)), clipped_steps=clipped)


@dataclass
class _Steps:
    """Consecutive simulated SGD steps from given parameters; returns the parameters after
    them, the sum of their (clipped) gradients and how many steps were clipped."""

    model: nn.Module
    names: list[str]
    labels: torch.Tensor
    plan: TrainingPlan
    options: SimulatorConfig

    def __call__(self, batches: list[slice], x: torch.Tensor, params: list[torch.Tensor],
                 create_graph: bool) -> tuple[list[torch.Tensor], list[torch.Tensor], int]:
        plan, buffers = self.plan, dict(self.model.named_buffers())
        grad_sum = [torch.zeros_like(p) for p in params]
        clipped = 0
        for batch in batches:
            with _autocast(self.options, x.device):
                out = functional_call(self.model, (dict(zip(self.names, params)), buffers), (x[batch],))
            if out.dtype == torch.bfloat16:
                out = out.float()  # the loss and its gradient in full precision
            loss = training_loss(plan.loss, out, self.labels[batch])
            grads = torch.autograd.grad(loss, params, create_graph=create_graph)
            grads, was_clipped = clip_step(grads, plan)
            clipped += was_clipped
            params = [p - plan.lr * g for p, g in zip(params, grads)]
            grad_sum = [s + g for s, g in zip(grad_sum, grads)]
        return params, grad_sum, clipped


class _Rematerialised(torch.autograd.Function):
    """The simulation with only segment boundaries kept: the forward pass trains without a
    graph, saving the parameters where each segment starts; the backward pass rebuilds one
    segment's graph at a time, last first, and carries the adjoint of θ back through it."""

    @staticmethod
    def forward(ctx, steps: _Steps, segments: list[list[slice]], counts: list[int], x: torch.Tensor,
                *theta0: torch.Tensor):
        params, total, starts = list(theta0), None, []
        with torch.enable_grad():
            for segment in segments:
                starts.append(params)
                inputs = [p.detach().requires_grad_(True) for p in params]
                params, grad_sum, clipped = steps(segment, x.detach(), inputs, create_graph=False)
                params = [p.detach() for p in params]
                total = grad_sum if total is None else [t + g for t, g in zip(total, grad_sum)]
                counts.append(clipped)
        ctx.steps, ctx.segments, ctx.starts = steps, segments, starts
        ctx.save_for_backward(x)
        return (*params, *[t.detach() for t in total])

    @staticmethod
    def backward(ctx, *adjoint: torch.Tensor):
        (x,) = ctx.saved_tensors
        k = len(adjoint) // 2
        adj_params, adj_sum = list(adjoint[:k]), list(adjoint[k:])  # Σ grads is additive over segments
        grad_x = torch.zeros_like(x)
        for segment, start in zip(reversed(ctx.segments), reversed(ctx.starts)):
            with torch.enable_grad():
                xs = x.detach().requires_grad_(True)
                inputs = [p.detach().requires_grad_(True) for p in start]
                params, grad_sum, _ = ctx.steps(segment, xs, inputs, create_graph=True)
                got = torch.autograd.grad([*params, *grad_sum], [xs, *inputs], [*adj_params, *adj_sum],
                                          allow_unused=True)
            grad_x += got[0]
            adj_params = [torch.zeros_like(p) if g is None else g for g, p in zip(got[1:], inputs)]
        theta0_grads = adj_params if any(ctx.needs_input_grad[4:]) else [None] * k
        return (None, None, None, grad_x, *theta0_grads)


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
