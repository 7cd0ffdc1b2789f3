"""Single-step gradient inversion (Geiping et al. 2020), the special case of the problem where
training was one SGD step on one batch: θ0 − θf = lr · ∇θ loss(batch; θ0).

Images are optimised so that their gradient at θ0 points the same way (1 − cos over all layers)
plus a TV prior, with Adam on the signed gradient, the learning rate decayed ×0.1 at 3/8, 5/8
and 7/8 of the run, and the images projected into the valid pixel range after every step.
Labels are read off the last layer's gradient (iDLG)."""

from __future__ import annotations

import torch
from torch.func import functional_call

from simudy.attacks.base import ThreatModel, register
from simudy.attacks.optimise import IterativeAttack
from simudy.errors import SimudyError
from simudy.inputs import balanced_labels
from simudy.losses import training_loss
from simudy.models import flatten
from simudy.objectives import cosine_distance, total_variation
from simudy.victim import Victim, parameter_change


def infer_labels(last_grad: torch.Tensor, n: int) -> torch.Tensor:
    """iDLG: under cross-entropy, the last layer's gradient for class c is mean_i (p_ic − [y_i = c])
    (times the non-negative features, for the weights), negative only for classes in the batch.
    One image: the most negative class. Several: the n most negative, assuming distinct labels."""
    score = last_grad if last_grad.dim() == 1 else last_grad.sum(1)
    if n > len(score):
        raise SimudyError(f"cannot infer {n} distinct labels from {len(score)} classes")
    return torch.argsort(score)[:n]


@register
class GradientInversion(IterativeAttack):
    name = "gradinv"
    columns = ["loss", "distance", "tv", "lr"]

    def requires(self) -> set[str]:
        return super().requires() | {"theta0", "hyperparams"}  # the gradient at θ0, and that it was one step

    def setup(self, victim: Victim, threat: ThreatModel, device: torch.device) -> None:
        cfg, hp = self.cfg, threat.hyperparams
        n = self.n_images(threat)
        if hp.epochs * -(-n // hp.batch_size) != 1:
            raise SimudyError(f"gradient inversion needs a victim trained for one step; this one took {hp.epochs} "
                              f"epoch(s) of batch size {hp.batch_size} on {n} images")
        if hp.loss != "cross_entropy":
            raise SimudyError("gradient inversion is implemented for cross-entropy victims")
        self.model, self.params = victim.model, {k: v.detach().requires_grad_(True) for k, v in victim.theta0.items()}
        self.buffers = dict(victim.model.named_buffers())
        self.target = parameter_change(victim)  # = lr · gradient
        gen = torch.Generator().manual_seed(cfg.seed)
        if cfg.labels == "infer":
            last = list(victim.theta0)[-1]  # the head's bias, or its weight in a bias-free model
            self.labels = infer_labels(victim.theta0[last] - victim.thetaf[last], n).to(device)
        else:
            self.labels = balanced_labels(n, threat.num_classes, gen).to(device)
        x = cfg.init_scale * torch.randn((n, *threat.image_shape), generator=gen)
        self.tensors = {"images": x.to(device).requires_grad_(True)}
        self.lo, self.hi = threat.pixel_box(device)
        self.optimizers = [torch.optim.Adam([self.tensors["images"]], lr=cfg.lr)]

    def current_lr(self, step: int) -> float:
        decays = sum(step >= self.cfg.steps * f for f in (3 / 8, 5 / 8, 7 / 8))
        return self.cfg.lr * 0.1**decays

    def step(self, step: int) -> dict:
        x, (opt,) = self.tensors["images"], self.optimizers
        out = functional_call(self.model, (self.params, self.buffers), (x,))
        grad = torch.autograd.grad(training_loss("cross_entropy", out, self.labels), list(self.params.values()),
                                   create_graph=True)
        distance = cosine_distance(flatten(grad), self.target)
        tv = total_variation(x)
        loss = distance + self.cfg.tv_weight * tv
        lr = self.current_lr(step)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        x.grad.sign_()
        opt.step()
        with torch.no_grad():
            x.copy_(torch.maximum(torch.minimum(x, self.hi), self.lo))
        return {"loss": loss.item(), "distance": distance.item(), "tv": tv.item(), "lr": lr}
