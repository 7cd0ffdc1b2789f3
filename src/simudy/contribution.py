"""Each dummy image's share of the simulated parameter change (Sec. 4.5).

The simulated change is the sum of the step gradients, and a step's gradient is the mean of
its batch's per-image gradients, so the change splits exactly into one vector per image:
v_i = Σ_t ∇θ ℓ(x_i; θ_t) / |B_t| over the steps t whose batch holds image i (lr factored out,
as in the simulated change). The paper measures an image's contribution by the norm of its
total gradient over the training dynamics: ‖v_i‖. Dummies that reconstruct a training image
carry large norms; the extra dummies of an oversized set end up with small ones.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from simudy.losses import training_loss
from simudy.simulate import TrainingPlan


def contributions(model: nn.Module, theta0: dict[str, torch.Tensor], images: torch.Tensor,
                  labels: torch.Tensor, plan: TrainingPlan) -> torch.Tensor:
    """‖v_i‖ for every image, replaying `plan` from θ0 without its clipping (the attack's final
    steps do not clip); a float tensor [n] on the CPU."""
    return share_vectors(model, theta0, images, labels, plan).norm(dim=1).cpu()


def share_vectors(model: nn.Module, theta0: dict[str, torch.Tensor], images: torch.Tensor,
                  labels: torch.Tensor, plan: TrainingPlan) -> torch.Tensor:
    """The vectors v_i, one row per image: [n, number of parameters]; their sum is the
    simulated change Σ_t ∇θ L_t."""
    buffers = dict(model.named_buffers())
    params = {k: v.detach() for k, v in theta0.items()}
    images, labels = images.detach(), labels.detach()

    def one_loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, (p, buffers), (x[None],))
        return training_loss(plan.loss, out, y[None])

    vectorised = vmap(grad(one_loss), in_dims=(None, 0, 0))

    def per_image(p, x, y):
        """vmap where the model allows it; one image at a time where its forward pass branches on
        data (transformers' attention masks)."""
        try:
            return vectorised(p, x, y)
        except RuntimeError:
            grads = [grad(one_loss)(p, xi, yi) for xi, yi in zip(x, y)]
            return {k: torch.stack([g[k] for g in grads]) for k in p}

    shares = torch.zeros(len(images), sum(v.numel() for v in params.values()), device=images.device)
    for batch in plan.batches(len(images)):
        grads = per_image(params, images[batch], labels[batch])
        size = len(range(len(images))[batch])
        shares[batch] += torch.cat([g.reshape(size, -1) for g in grads.values()], dim=1) / size
        params = {k: p - plan.lr * grads[k].mean(0) for k, p in params.items()}
    return shares
