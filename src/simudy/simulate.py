"""The differentiable training simulator (Alg. 1, lines 6-13).

Training is replayed functionally from θ0 on (dummy) images: every simulated SGD step's
gradient is taken with `create_graph=True`, so the simulated final parameters, and any loss
on them, can be differentiated with respect to the images. The model stays in eval mode, as
in the victim's training, so BatchNorm is the fixed affine map of θ0's running statistics.

`SimulatorConfig` picks how it is computed, never what: rematerialisation keeps only the
parameters at segment boundaries and, in the backward pass, recomputes the steps in between
and pulls the adjoints back one step (and one chunk of images) at a time: memory for time,
exactly; each step's vector-Jacobian product can be taken in forward mode (`vjp: jvp`). The
layout and precision switches trade exactness for speed. `simulate_reference.py` keeps the
plain unrolled loop to measure and test against.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.autograd.forward_ad as fwAD
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
    """Simulated SGD steps: `__call__` runs several with autograd recording them; `advance` and
    `vjp` are one step without a graph and one step's vector-Jacobian product, for the
    rematerialised backward pass."""

    model: nn.Module
    names: list[str]
    labels: torch.Tensor
    plan: TrainingPlan
    options: SimulatorConfig

    def loss(self, x: torch.Tensor, rows: slice, params: list[torch.Tensor], weight: float = 1.0) -> torch.Tensor:
        buffers = dict(self.model.named_buffers())
        with _autocast(self.options, x.device):
            out = functional_call(self.model, (dict(zip(self.names, params)), buffers), (x,))
        if out.dtype == torch.bfloat16:
            out = out.float()  # the loss and its gradient in full precision
        explicit = self.options.vjp == "jvp"
        return weight * training_loss(self.plan.loss, out, self.labels[rows], explicit)

    def __call__(self, batches: list[slice], x: torch.Tensor, params: list[torch.Tensor],
                 create_graph: bool) -> tuple[list[torch.Tensor], list[torch.Tensor], int]:
        """The parameters after `batches`, the sum of the (clipped) step gradients, the clipped count."""
        grad_sum = [torch.zeros_like(p) for p in params]
        clipped = 0
        for batch in batches:
            grads = torch.autograd.grad(self.loss(x[batch], batch, params), params, create_graph=create_graph)
            grads, was_clipped = clip_step(grads, self.plan)
            clipped += was_clipped
            params = [p - self.plan.lr * g for p, g in zip(params, grads)]
            grad_sum = [s + g for s, g in zip(grad_sum, grads)]
        return params, grad_sum, clipped

    def advance(self, batch: slice, x: torch.Tensor, params: list[torch.Tensor]):
        with torch.enable_grad():
            inputs = [p.detach().requires_grad_(True) for p in params]
            after, grads, clipped = self([batch], x.detach(), inputs, create_graph=False)
        return [p.detach() for p in after], grads, clipped

    def vjp(self, batch: slice, x: torch.Tensor, params: list[torch.Tensor], adj_after: list[torch.Tensor],
            adj_sum: list[torch.Tensor], clipped: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Pull the adjoints of θ after the step and of Σ grads back to the images of `batch` and
        θ before the step. The step's gradient is a mean over images (eval-mode BatchNorm), so
        its graph is rebuilt `options.chunk` images at a time. `clipped`: whether the forward
        pass clipped this step (only then is its full gradient needed first)."""
        plan = self.plan
        adj_grad = [s - plan.lr * a for s, a in zip(adj_sum, adj_after)]  # θ' = θ − lr·c(g), Σ += c(g)
        rows = range(batch.start, min(batch.stop, len(x)))
        size = self.options.chunk or len(rows)
        if clipped:
            adj_grad = _clip_vjp(self._gradient(batch, x, params), adj_grad, plan)
        grad_x = torch.zeros_like(x[batch])
        adj_before = None
        for first in range(0, len(rows), size):
            chunk = slice(rows[first], rows[first] + min(size, len(rows) - first))
            got = self._chunk_vjp(x, chunk, params, adj_grad, (chunk.stop - chunk.start) / len(rows))
            grad_x[chunk.start - rows[0] : chunk.stop - rows[0]] = got[0]
            if adj_before is None:
                adj_before = [a if g is None else a + g for a, g in zip(adj_after, got[1:])]
            else:  # accumulate in place: one parameter-sized buffer per step, whatever the chunk
                for a, g in zip(adj_before, got[1:]):
                    if g is not None:
                        a.add_(g)
        return grad_x, adj_before

    def _chunk_vjp(self, x: torch.Tensor, chunk: slice, params: list[torch.Tensor], adj_grad: list[torch.Tensor],
                   weight: float) -> tuple[torch.Tensor | None, ...]:
        """∂⟨∇θ loss(chunk), adj_grad⟩ with respect to the chunk's images and θ. The inner product
        is the derivative of the loss along adj_grad, so `jvp` takes it in forward mode."""
        with torch.enable_grad():
            xc = x[chunk].detach().requires_grad_(True)
            inputs = [p.detach().requires_grad_(True) for p in params]
            if self.options.vjp == "jvp":
                with fwAD.dual_level():
                    duals = [fwAD.make_dual(p, t) for p, t in zip(inputs, adj_grad)]
                    along = fwAD.unpack_dual(self.loss(xc, chunk, duals, weight)).tangent
                return torch.autograd.grad(along, [xc, *inputs], allow_unused=True)
            grads = torch.autograd.grad(self.loss(xc, chunk, inputs, weight), inputs, create_graph=True)
            return torch.autograd.grad(grads, [xc, *inputs], adj_grad, allow_unused=True)

    def _gradient(self, batch: slice, x: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
        with torch.enable_grad():
            inputs = [p.detach().requires_grad_(True) for p in params]
            return list(torch.autograd.grad(self.loss(x[batch].detach(), batch, inputs), inputs))


def _clip_vjp(grad: list[torch.Tensor], adjoint: list[torch.Tensor], plan: TrainingPlan) -> list[torch.Tensor]:
    """Adjoint of a clipped step's g ↦ g·t/‖g‖: (t/‖g‖)·(a − (g·a/‖g‖²)·g)."""
    norm = torch.sqrt(sum(g.pow(2).sum() for g in grad))
    along = sum((g * a).sum() for g, a in zip(grad, adjoint)) / norm**2
    return [(plan.clip_to_norm / norm) * (a - along * g) for g, a in zip(grad, adjoint)]


class _Rematerialised(torch.autograd.Function):
    """The simulation with only segment boundaries kept: the forward pass trains without a
    graph, saving θ where each segment starts; the backward pass recomputes a segment's
    parameters (again without a graph) and pulls the adjoints back one step at a time."""

    @staticmethod
    def forward(ctx, steps: _Steps, segments: list[list[slice]], counts: list[int], x: torch.Tensor,
                *theta0: torch.Tensor):
        params, starts = list(theta0), []
        total = [torch.zeros_like(p) for p in params]
        for segment in segments:
            starts.append(params)
            for batch in segment:
                params, grads, clipped = steps.advance(batch, x, params)
                total = [t + g.detach() for t, g in zip(total, grads)]
                counts.append(clipped)
        ctx.steps, ctx.segments, ctx.starts, ctx.clipped = steps, segments, starts, list(counts)
        ctx.save_for_backward(x)
        return (*params, *total)

    @staticmethod
    def backward(ctx, *adjoint: torch.Tensor):
        (x,) = ctx.saved_tensors
        k = len(adjoint) // 2
        adj_params, adj_sum = list(adjoint[:k]), list(adjoint[k:])  # Σ grads is additive over steps
        if len(ctx.starts) != len(ctx.segments):
            raise RuntimeError("a rematerialised simulation can be differentiated only once (no retain_graph)")
        grad_x = torch.zeros_like(x)
        clipped = iter(reversed(ctx.clipped))  # one flag per step, in step order
        for segment in reversed(ctx.segments):
            befores = [ctx.starts.pop()]  # dropped as soon as they are used, to lower the peak
            for batch in segment[:-1]:
                befores.append(ctx.steps.advance(batch, x, befores[-1])[0])
            for batch in reversed(segment):
                gx, adj_params = ctx.steps.vjp(batch, x, befores.pop(), adj_params, adj_sum, bool(next(clipped)))
                grad_x[batch] += gx
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
