"""Checkpoint files: safetensors only. Loading someone else's model is a security boundary,
so nothing here unpickles; `import_torch_checkpoint` converts a `.pt`/`.pth` file through
`torch.load(weights_only=True)`, which refuses arbitrary objects."""

from __future__ import annotations

import json
import pickle
import stat
import struct
import warnings
import zipfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import nn

from simudy.errors import SimudyError
from simudy.io import atomic_path

State = dict[str, torch.Tensor]

# safetensors' own limit; checked before the header is read, so a crafted length costs nothing.
MAX_HEADER_BYTES = 100_000_000
# The dtypes simudy's models and reconstructions use. Others (complex, float8, bool, wide unsigned)
# are refused before torch builds a tensor from them: no model here takes them, and torch does
# not support every operation (the finiteness check among them) on all of them.
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8}
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTOCOLS = (b"\x02", b"\x03", b"\x04", b"\x05")
PICKLE_HINT = ("is a pickle/torch.save file; simudy loads only safetensors. "
               "Convert it with `simudy import-checkpoint`, which never unpickles code.")


class _Invalid(Exception):
    """The file is not valid safetensors; the message says what the reader found."""


def save_weights(path: str | Path, state: State, metadata: dict[str, str] | None = None) -> None:
    """Write `state` as safetensors. Serialised in memory first, so that the only failures left are
    the OS's (full disk, no permission), which atomic_path reports with the path, leaving no file."""
    path = Path(path)
    data = save({k: v.detach().contiguous().cpu() for k, v in state.items()}, metadata=metadata)
    _check_parent_is_directory(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def load_weights(path: str | Path) -> State:
    """Load a safetensors file strictly: anything else (a pickle, a truncated or crafted file),
    an unsupported dtype and non-finite values are refused with one SimudyError naming the file."""
    path = Path(path)
    size = _regular_file_size(path)
    head, header = _read_header(path, size)
    try:
        state = _read_tensors(path, header)
    except _Invalid as err:
        raise SimudyError(f"{path}: {_why_not_safetensors(head, size, header, str(err))}") from None
    if not state:
        raise SimudyError(f"{path}: holds no tensors")
    for name, t in state.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise SimudyError(f"{path}: tensor {name!r} contains NaN or infinite values")
    return state


def _regular_file_size(path: Path) -> int:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise SimudyError(f"{path}: checkpoint not found") from None
    except OSError as err:
        raise SimudyError(f"{path}: cannot be read ({_os_reason(err)})") from None
    if stat.S_ISDIR(st.st_mode):
        raise SimudyError(f"{path}: is a directory, not a checkpoint file")
    if not stat.S_ISREG(st.st_mode):
        raise SimudyError(f"{path}: is not a regular file")
    return st.st_size


def _read_header(path: Path, size: int) -> tuple[bytes, bytes | None]:
    """The first 8 bytes and the JSON header they announce, or None for a length the file
    cannot hold or safetensors would not read."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return head, None
            (length,) = struct.unpack("<Q", head)
            if length > min(MAX_HEADER_BYTES, size - 8):
                return head, None
            return head, fh.read(length)
    except OSError as err:
        raise SimudyError(f"{path}: cannot be read ({_os_reason(err)})") from None


def _read_tensors(path: Path, header: bytes | None) -> State:
    """safetensors validates the header (JSON types, dtypes, shapes against offsets, contiguous
    in-file offsets, str→str metadata); what it lets through, duplicate names, is checked here."""
    if header is None:
        raise _Invalid("impossible header length")
    with _safetensors_errors(path):
        with safe_open(str(path), "pt") as f:
            names = list(f.keys())
            for name in names:
                dtype = f.get_slice(name).get_dtype()
                if dtype not in DTYPES:
                    raise SimudyError(f"{path}: tensor {name!r} has dtype {dtype}, which simudy does not load")
            state = {name: f.get_tensor(name) for name in names}
    try:
        _header_json(header)
    except ValueError as err:
        raise _Invalid(str(err)) from None
    return state


@contextmanager
def _safetensors_errors(path: Path) -> Iterator[None]:
    """The reader's refusals as _Invalid. A Rust panic surfaces as pyo3's PanicException, which
    derives from BaseException (so `except Exception` misses it) and cannot be imported by name."""
    try:
        yield
    except SafetensorError as err:
        # An unknown dtype's message lists every known one; the name it refused is enough.
        reason = str(err).removeprefix("Error while deserializing header: ").split(", expected one of")[0]
        raise _Invalid(reason) from None
    except OSError as err:
        raise SimudyError(f"{path}: cannot be read ({_os_reason(err)})") from None
    except BaseException as err:
        if type(err).__name__ != "PanicException":
            raise
        raise _Invalid(f"the safetensors reader failed: {err}") from None


def _header_json(header: bytes) -> dict:
    """The header as a dict; ValueError when it is not JSON or names a key twice (safetensors keeps
    the last silently, which would make the file mean two things)."""

    def unique(pairs: list[tuple[str, object]]) -> dict:
        twice = [k for k, n in Counter(k for k, _ in pairs).items() if n > 1]
        if twice:
            raise ValueError(f"the header names {twice[0]!r} twice")
        return dict(pairs)

    try:
        return json.loads(header, object_pairs_hook=unique)
    except RecursionError:
        raise ValueError("the header nests too deeply") from None


def _why_not_safetensors(head: bytes, size: int, header: bytes | None, reason: str) -> str:
    """What an invalid file most likely is, for the message. Only invalid files get here, so a
    valid header length whose low byte is 0x80 is never taken for a pickle."""
    if head.startswith(ZIP_MAGIC) or (head[:1] == b"\x80" and head[1:2] in PICKLE_PROTOCOLS):
        return PICKLE_HINT
    if len(head) < 8:
        return f"truncated ({size} bytes); not a safetensors file"
    (length,) = struct.unpack("<Q", head)
    if length > size - 8:
        return f"truncated or not safetensors (header says {length} bytes, file has {size})"
    if header is None:
        return f"not safetensors (a header of {length} bytes; safetensors allows {MAX_HEADER_BYTES})"
    if "file not fully covered" in reason:
        return _coverage_problem(header, size - 8 - length) or f"not a valid safetensors file ({reason})"
    return f"not a valid safetensors file ({reason})"


def _coverage_problem(header: bytes, data_size: int) -> str | None:
    """Truncation or trailing bytes. safetensors reports both alike, after validating every entry,
    so the offsets read here are well formed."""
    try:
        entries = _header_json(header)
    except ValueError:
        return None
    end = max((v["data_offsets"][1] for k, v in entries.items() if k != "__metadata__"), default=0)
    if end > data_size:
        return f"truncated (tensor data ends {end - data_size} bytes past the end of the file)"
    return f"not a valid safetensors file ({data_size - end} bytes after the last tensor's data)"


def _os_reason(err: OSError) -> str:
    return (err.strerror or str(err)).lower()


def _check_parent_is_directory(path: Path) -> None:
    """atomic_path creates missing folders; an existing file in their place would otherwise read
    as a puzzling "file exists"."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise SimudyError(f"{path}: cannot write: {parent} is not a directory")
            return


def check_compatible(a: State, b: State, path_a: str | Path, path_b: str | Path) -> None:
    """θ0 and θf must describe the same architecture: same names, shapes and dtypes."""
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
        if a[k].dtype != b[k].dtype:
            raise SimudyError(
                f"{path_a} and {path_b} differ in dtype at {k!r}: {_dtype(a[k])} vs {_dtype(b[k])}; "
                "θ0 − θf of different precisions is not what the victim's training did"
            )


def load_into(model: nn.Module, state: State, path: str | Path) -> nn.Module:
    """Load `state` into `model`, naming the file and the first mismatches if they differ. No
    silent cast: a float64 file loaded into a float32 model would give another result."""
    expected = model.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    wrong = [k for k in expected.keys() & state.keys() if expected[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        raise SimudyError(
            f"{path}: does not fit the configured architecture "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shape {sorted(wrong)[:3]})"
        )
    for k in sorted(expected):
        if expected[k].dtype != state[k].dtype:
            raise SimudyError(f"{path}: tensor {k!r} is {_dtype(state[k])} but the model's is {_dtype(expected[k])}")
    model.load_state_dict(state)
    return model


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def import_torch_checkpoint(src: str | Path, dst: str | Path) -> int:
    """Convert a torch checkpoint (e.g. from pytorch-cifar: {'net': state_dict}) to safetensors."""
    src = Path(src)
    state = _tensors_only(src, _torch_load(src))
    save_weights(dst, state)
    return len(state)


def _torch_load(src: Path) -> object:
    """torch.load with weights_only=True, after checking the file is what torch.save writes, with
    our own messages: torch's suggest retrying with weights_only=False, i.e. running the file's code."""
    _regular_file_size(src)
    if _is_safetensors(src):
        raise SimudyError(f"{src}: is already a safetensors file; use it as it is")
    with open(src, "rb") as fh:
        head = fh.read(2)
    if head == ZIP_MAGIC[:2]:
        _check_torch_zip(src)
    elif not (head[:1] == b"\x80" and head[1:2] in PICKLE_PROTOCOLS):
        raise SimudyError(f"{src}: not a torch checkpoint (torch.save writes a zip archive or a pickle)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pickle-protocol chatter; refusals get our own message below
            return torch.load(src, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise SimudyError(
            f"{src}: cannot be read safely: it holds Python objects other than tensors, and simudy never "
            "unpickles those. Re-save a plain state dict, torch.save(model.state_dict(), path), and import that."
        ) from None
    except Exception:  # torch raises RuntimeError, EOFError, KeyError, ... on damaged files
        raise SimudyError(f"{src}: cannot be read safely as a torch checkpoint: corrupt or truncated") from None


def _is_safetensors(path: Path) -> bool:
    try:
        load_weights(path)
    except SimudyError:
        return False
    return True


def _check_torch_zip(src: Path) -> None:
    """torch.save's zip holds `<name>/data.pkl`; reading the zip's directory runs nothing."""
    try:
        with zipfile.ZipFile(src) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        raise SimudyError(f"{src}: a corrupt or truncated zip archive, not a readable torch checkpoint") from None
    if not any(n.count("/") == 1 and n.endswith("/data.pkl") for n in names):
        raise SimudyError(f"{src}: a zip archive, but not a torch checkpoint (no data.pkl inside)")


def _tensors_only(src: Path, obj: object) -> State:
    """The state dict in `obj`, refusing what could not be loaded back: non-tensors, names that
    collide or that safetensors reserves, non-dense or unsupported tensors, NaN and infinities."""
    for key in ("net", "state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise SimudyError(f"{src}: holds a {type(obj).__name__}, not a state dict of tensors")
    for k, v in obj.items():
        if not isinstance(k, str):
            raise SimudyError(f"{src}: entry {k!r} is named by a {type(k).__name__}; tensor names are strings")
        if not isinstance(v, torch.Tensor):
            raise SimudyError(f"{src}: entry {k!r} is a {type(v).__name__}, not a tensor; import a plain state dict")
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    if len(state) < len(obj):
        raise SimudyError(f"{src}: two entries have the same name once the 'module.' prefix is dropped")
    if not state:
        raise SimudyError(f"{src}: holds no tensors; nothing to import")
    for k, v in state.items():
        _check_importable(src, k, v)
    # Separate copies: tied weights share memory, which safetensors refuses to write.
    return {k: v.detach().clone() for k, v in state.items()}


def _check_importable(src: Path, name: str, t: torch.Tensor) -> None:
    if name == "__metadata__":
        raise SimudyError(f"{src}: a tensor is named '__metadata__', which safetensors reserves")
    if t.layout != torch.strided or t.is_meta:
        raise SimudyError(f"{src}: tensor {name!r} is not a dense tensor with data ({t.layout})")
    if t.dtype not in DTYPES.values():
        raise SimudyError(f"{src}: tensor {name!r} has dtype {_dtype(t)}, which simudy does not load")
    if t.is_floating_point() and not torch.isfinite(t).all():
        raise SimudyError(f"{src}: tensor {name!r} contains NaN or infinite values")
