"""Checkpoint files: safetensors only. Loading someone else's model is a security boundary,
so nothing here unpickles; `import_torch_checkpoint` converts a `.pt`/`.pth` file through
`torch.load(weights_only=True)`, which refuses arbitrary objects."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from simudy.errors import SimudyError
from simudy.io import atomic_path

State = dict[str, torch.Tensor]


def save_weights(path: str | Path, state: State, metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_weights(path: str | Path) -> State:
    """Load a safetensors file, refusing pickles, truncated files and non-finite values."""
    path = Path(path)
    _check_safetensors_header(path)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise SimudyError(f"{path}: not a valid safetensors file ({err})") from None
    for name, t in state.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise SimudyError(f"{path}: tensor {name!r} contains NaN or infinite values")
    return state


def _check_safetensors_header(path: Path) -> None:
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if head[:2] == b"PK" or head[:1] == b"\x80":
                raise SimudyError(
                    f"{path}: is a pickle/torch.save file; simudy loads only safetensors. "
                    "Convert it with `simudy import-checkpoint`, which never unpickles code."
                )
            if len(head) < 8:
                raise SimudyError(f"{path}: truncated ({size} bytes); not a safetensors file")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > size - 8:
                raise SimudyError(
                    f"{path}: truncated or not safetensors (header says {header_len} bytes, file has {size})"
                )
            header = json.loads(fh.read(header_len))
    except FileNotFoundError:
        raise SimudyError(f"{path}: checkpoint not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise SimudyError(f"{path}: not a safetensors file (unreadable header)") from None
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    if ends and 8 + header_len + max(ends) > size:
        raise SimudyError(f"{path}: truncated (tensor data ends past the end of the file)")


def check_compatible(a: State, b: State, path_a: str | Path, path_b: str | Path) -> None:
    """θ0 and θf must describe the same architecture: same names, same shapes."""
    if a.keys() != b.keys():
        only_a, only_b = sorted(a.keys() - b.keys())[:3], sorted(b.keys() - a.keys())[:3]
        raise SimudyError(
            f"{path_a} and {path_b} hold different architectures: "
            f"only in the first {only_a}, only in the second {only_b}"
        )
    for k in a:
        if a[k].shape != b[k].shape:
            raise SimudyError(
                f"{path_a} and {path_b} differ in shape at {k!r}: {tuple(a[k].shape)} vs {tuple(b[k].shape)}"
            )


def load_into(model: nn.Module, state: State, path: str | Path) -> nn.Module:
    """Load `state` into `model`, naming the file and the first mismatches if they differ."""
    expected = model.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    wrong = [k for k in expected.keys() & state.keys() if expected[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        raise SimudyError(
            f"{path}: does not fit the configured architecture "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shape {sorted(wrong)[:3]})"
        )
    model.load_state_dict(state)
    return model


def import_torch_checkpoint(src: str | Path, dst: str | Path) -> int:
    """Convert a torch checkpoint (e.g. from pytorch-cifar: {'net': state_dict}) to safetensors."""
    try:
        obj = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for refused or corrupt files
        raise SimudyError(f"{src}: cannot be read safely as a torch checkpoint ({err})") from None
    for key in ("net", "state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SimudyError(f"{src}: holds no state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    save_weights(dst, state)
    return len(state)
