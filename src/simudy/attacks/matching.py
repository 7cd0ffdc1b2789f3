"""What Loo et al., Haim/Buzaglo et al. and the SimuDy authors' baselines share: they explain
the released parameters as a weighted sum of gradients of per-candidate terms,

    target ≈ Σ_p ∇θ Σ_i w_p,i · h(f(x_i; θ_p), y_i),      p over evaluation points {θ0, θf},

and optimise the candidate images x (m = candidates × n of them, balanced labels) jointly with
the weights w. Subclasses choose h, the target, the weights' constraints and the loss."""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable

import torch
from torch.func import functional_call

from simudy.attacks.base import ThreatModel
from simudy.attacks.optimise import IterativeAttack
from simudy.inputs import balanced_labels
from simudy.models import flatten
from simudy.victim import Victim


class GradientMatching(IterativeAttack):
    def setup(self, victim: Victim, threat: ThreatModel, device: torch.device) -> None:
        cfg = self.cfg
        self.victim, self.threat = victim, threat
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.m = math.ceil(cfg.candidates * self.n_images(threat))
        x = cfg.init_scale * torch.randn((self.m, *threat.image_shape), generator=self.gen)
        self.labels = balanced_labels(self.m, threat.num_classes, self.gen).to(device)
        self.tensors = {"images": x.to(device).requires_grad_(True)}
        self.lo, self.hi = threat.pixel_box(device)
        self.buffers = dict(victim.model.named_buffers())
        self.prepare(device)

    @abstractmethod
    def prepare(self, device: torch.device) -> None:
        """Create the weights (in `self.tensors`), the target and the optimisers."""

    def weights(self, shape: tuple[int, ...], lo: float, hi: float, device: torch.device) -> torch.Tensor:
        """Seeded weights ~ U[lo, hi], optimised alongside the images."""
        w = lo + (hi - lo) * torch.rand(shape, generator=self.gen)
        return w.to(device).requires_grad_(True)

    def params_at(self, point: str) -> dict[str, torch.Tensor]:
        state = self.victim.theta0 if point == "theta0" else self.victim.thetaf
        return {k: v.detach().requires_grad_(True) for k, v in state.items()}

    def gradient(self, params: dict[str, torch.Tensor], x: torch.Tensor,
                 term: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """∇θ term(f(x; θ)) at `params`, flattened, differentiable in x and the weights."""
        out = functional_call(self.victim.model, (params, self.buffers), (x,))
        return flatten(torch.autograd.grad(term(out), list(params.values()), create_graph=True))
