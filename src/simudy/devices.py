"""Where computation runs: CUDA when present, else the CPU."""

from __future__ import annotations

import torch

from simudy.errors import SimudyError


def pick_device(name: str = "auto") -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise SimudyError("device 'cuda' requested but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)
