"""The input kind: what an attack optimises in place of the training inputs, and how.

Images and token sequences differ here, and only here: the tensor an attack optimises
(pixels; or, for text, a distribution over the vocabulary at each position), how it becomes the
model's input, which prior applies (total variation for images), the dummies' classes, and
what the attack writes out besides the tensor (token ids for text). The attacks and the
simulator stay the same for every kind.
The stages around them (reading a dataset, pairing and scoring, the report) are picked by
the victim's `input` in `simudy.text` and the image modules.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from simudy.objectives import total_variation

if TYPE_CHECKING:
    from simudy.victim import Victim


def balanced_labels(n: int, num_classes: int, gen: torch.Generator) -> torch.Tensor:
    """An equal number of each class (as far as n allows), in random order."""
    labels = torch.arange(n) % num_classes
    return labels[torch.randperm(n, generator=gen)]


class InputKind(ABC):
    name: str

    @abstractmethod
    def dummies(self, n: int, gen: torch.Generator, scale: float) -> torch.Tensor:
        """The optimised tensor of `n` seeded dummies, at `scale` (the attack's init_scale)."""

    @abstractmethod
    def model_input(self, z: torch.Tensor) -> torch.Tensor:
        """What the model reads for the dummies `z` (differentiably)."""

    @abstractmethod
    def prior(self, z: torch.Tensor) -> torch.Tensor:
        """The regulariser the attack weighs with `tv_weight` (0 where none applies)."""

    def configured(self, cfg) -> InputKind:
        """This kind with the attack's own settings for it (text: its vocabulary)."""
        return self

    def bind(self, model: torch.nn.Module) -> None:
        """Prepare the model to read this kind's dummies (text: which tokens they choose among)."""
        return None

    def labels(self, n: int, num_classes: int, gen: torch.Generator) -> torch.Tensor:
        """The dummies' classes."""
        return balanced_labels(n, num_classes, gen)

    def outputs(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """What is written beside the optimised tensor."""
        return {}

    def readable(self, z: torch.Tensor) -> torch.Tensor:
        """The dummies as the progress readout scores them."""
        return z


@dataclass(frozen=True)
class Images(InputKind):
    """Dummy images in the victim's normalised space, [n, C, H, W]."""

    shape: tuple[int, int, int]
    name = "image"

    def dummies(self, n: int, gen: torch.Generator, scale: float) -> torch.Tensor:
        return scale * torch.randn((n, *self.shape), generator=gen)

    def model_input(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def prior(self, z: torch.Tensor) -> torch.Tensor:
        return total_variation(z)


def of_victim(victim: Victim, theta0_granted: bool) -> InputKind:
    """The victim's input kind (`input` in victim.json; images where it is absent)."""
    if victim.meta.get("input", "image") == "text":
        from simudy.text import text_input

        return text_input(victim, theta0_granted)
    return Images(victim.image_shape)
