"""Properties of checkpoint reading, checked on thousands of generated files: whatever the bytes,
`load_weights` returns exactly the tensors the file encodes or raises SimudyError naming the file,
never another exception; and every file safetensors writes loads back exactly, and is what
save_weights writes."""

import itertools
import json
import math
import struct
from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors.torch import save, save_file

from simudy.checkpoints import load_weights, save_weights
from simudy.errors import SimudyError

# max_examples from the profile conftest loads: 2000, or 100 in the fast lane.
PROPERTY = settings(database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# The format's dtypes, read here independently of simudy to decode what a file says.
TORCH_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                "BOOL": torch.bool, "U16": torch.uint16, "C64": torch.complex64}
NAMES = list(TORCH_DTYPES)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """One file the examples overwrite (hypothesis re-runs a test, not a function-scoped fixture)."""
    path = tmp_path_factory.mktemp("properties") / "w.safetensors"
    path.touch()
    return path


def overwrite(path, blob: bytes) -> None:
    """Rewrite in place: opening with truncation makes ext4 flush to disk, 2 ms an example."""
    with open(path, "r+b") as fh:
        fh.write(blob)
        fh.truncate()


def canonical(blob: bytes) -> tuple[dict, bytes]:
    """A file's header as a dict and its data: safetensors writes metadata keys in no fixed order."""
    (length,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + length]), blob[8 + length:]


def decode(blob: bytes) -> dict[str, torch.Tensor]:
    """What a file that loaded encodes, by the format's definition (8-byte length, JSON, data)."""
    (length,) = struct.unpack("<Q", blob[:8])
    data = blob[8 + length:]
    out = {}
    for name, entry in json.loads(blob[8:8 + length]).items():
        if name == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        dtype = TORCH_DTYPES[entry["dtype"]]
        raw = bytearray(data[start:end])
        flat = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        out[name] = flat.reshape(entry["shape"])
    return out


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit for bit, dtype and shape included (so -0.0 and 0.0 differ)."""
    return (a.dtype == b.dtype and a.shape == b.shape
            and bytes(a.flatten().view(torch.uint8).numpy()) == bytes(b.flatten().view(torch.uint8).numpy()))


def load_or_refuse(path, blob: bytes) -> None:
    """The property: the file's own tensors, or a SimudyError naming it; anything else fails."""
    overwrite(path, blob)
    try:
        state = load_weights(path)
    except SimudyError as err:
        assert str(err).startswith(f"{path}: ")
        event("refused")
        return
    expected = decode(blob)
    assert state.keys() == expected.keys()
    assert all(same(state[k], expected[k]) for k in state)
    event("loaded")


# -- valid files ---------------------------------------------------------------------------------


@st.composite
def tensors(draw) -> torch.Tensor:
    dtype = draw(st.sampled_from(["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8"]))
    shape = draw(st.lists(st.integers(0, 4), max_size=3))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    if dtype in ("F64", "F32", "F16", "BF16"):
        return (torch.randn(shape, generator=generator, dtype=torch.float64) * 100).to(TORCH_DTYPES[dtype])
    return torch.randint(0, 256, shape, generator=generator).to(TORCH_DTYPES[dtype])


state_dicts = st.dictionaries(st.text(min_size=1, max_size=12).filter(lambda k: k != "__metadata__"), tensors(),
                              min_size=1, max_size=4)
# Metadata of every size moves the header length through every residue that safetensors writes
# (it pads headers to a multiple of 8), 0x80 among them: the low byte a pickle starts with. A run
# of one character makes the size: it costs hypothesis one draw, not one per character.
metadata = st.dictionaries(st.text(max_size=8), st.builds(lambda text, n: text + "x" * n, st.text(max_size=8),
                                                          st.integers(0, 300)), max_size=3)


def test_valid_files_load_exactly(tmp_path_factory):
    """Files safetensors writes load exactly, and save_weights writes them again byte for byte."""
    folder, count, residues = tmp_path_factory.mktemp("valid"), itertools.count(), Counter()

    @PROPERTY
    @given(state=state_dicts, meta=metadata)
    def check(state, meta):
        # New names each time: replacing or deleting a file just written makes ext4 flush it, 3 ms.
        n = next(count)
        theirs, ours = folder / f"{n}.safetensors", folder / f"{n}.simudy.safetensors"
        save_file(state, theirs, metadata=meta)
        blob = theirs.read_bytes()
        residues[blob[0]] += 1
        loaded = load_weights(theirs)
        assert loaded.keys() == state.keys()
        assert all(same(loaded[k], state[k]) for k in state)
        save_weights(ours, loaded, metadata=meta)
        written = ours.read_bytes()
        assert canonical(written) == canonical(blob)
        assert written == blob or len(meta) > 1  # two or more metadata keys come in a hash map's order

    check()
    assert sum(residues.values()) >= PROPERTY.max_examples
    if PROPERTY.max_examples >= 2000:  # the fast lane's 100 draws need not reach every residue
        assert residues[0x80] and len(residues) == 32, residues


# -- random and damaged files ---------------------------------------------------------------------


@PROPERTY
@given(blob=st.one_of(
    st.binary(max_size=400),
    st.builds(lambda n, rest: struct.pack("<Q", n) + rest, st.integers(0, 500), st.binary(max_size=500)),
    st.builds(lambda n, rest: struct.pack("<Q", n) + rest, st.integers(0, 2**64 - 1), st.binary(max_size=50)),
))
def test_random_bytes(scratch, blob):
    load_or_refuse(scratch, blob)


@st.composite
def mutated(draw) -> bytes:
    """A valid file with 1 to 4 edits: bit flips, byte changes, truncation, insertions, deletions,
    splices of its own bytes, and edits of the header length."""
    blob = bytearray(save(draw(state_dicts), metadata=draw(metadata)))
    (length,) = struct.unpack("<Q", blob[:8])
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "byte", "truncate", "insert", "delete", "splice", "length"]))
        # Half of the edits land in the header, where a file's meaning is.
        end = draw(st.sampled_from([min(8 + length, len(blob)), len(blob)]))
        pos = draw(st.integers(0, max(end - 1, 0)))
        if op == "flip" and blob:
            blob[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte" and blob:
            blob[pos] = draw(st.integers(0, 255))
        elif op == "truncate":
            del blob[pos:]
        elif op == "insert":
            blob[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del blob[pos:pos + draw(st.integers(1, 16))]
        elif op == "splice":
            src = draw(st.integers(0, max(len(blob) - 1, 0)))
            blob[pos:pos + draw(st.integers(0, 16))] = blob[src:src + draw(st.integers(1, 16))]
        elif op == "length":
            new = draw(st.one_of(st.integers(-16, 16).map(lambda d: length + d), st.integers(0, 2**64 - 1)))
            blob[:8] = struct.pack("<Q", max(new, 0))
    return bytes(blob)


@PROPERTY
@given(blob=mutated())
def test_damaged_files(scratch, blob):
    load_or_refuse(scratch, blob)


# -- crafted headers ---------------------------------------------------------------------------------


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)


def sometimes(draw, valid, wrong):
    """Mostly the valid value, one time in eight a wrong one: most files stay near valid."""
    return draw(wrong if draw(st.sampled_from([False] * 7 + [True])) else valid)


@st.composite
def near_valid(draw) -> bytes:
    """Headers built like real ones, each field sometimes wrong: dtypes, shapes, offsets that are
    off by a little or of the wrong type, entries missing a field, metadata that is not str→str,
    and a data section a little too short or too long."""
    header, offset = {}, 0
    names = draw(st.lists(st.sampled_from(["a", "b", "c", ""]), min_size=1, max_size=4, unique=True))
    names[0] = sometimes(draw, st.just(names[0]), st.just("__metadata__"))
    for name in names:
        dtype = sometimes(draw, st.sampled_from(NAMES), json_values)
        shape = sometimes(draw, st.lists(st.integers(0, 4), max_size=3), st.lists(st.integers(-1, 4)) | json_values)
        size = TORCH_DTYPES[dtype].itemsize if isinstance(dtype, str) and dtype in TORCH_DTYPES else 4
        if isinstance(shape, list) and len(shape) <= 3 and all(type(d) is int and 0 <= d <= 4 for d in shape):
            size *= math.prod(shape)  # only small shapes: the data below is allocated for real
        start = offset + sometimes(draw, st.just(0), st.sampled_from([-1, 1]))
        stop = start + size + sometimes(draw, st.just(0), st.sampled_from([-1, 1]))
        entry = {"dtype": dtype, "shape": shape, "data_offsets": sometimes(draw, st.just([start, stop]), json_values)}
        for key in sometimes(draw, st.just([]), st.lists(st.sampled_from(list(entry)), min_size=1, max_size=1)):
            del entry[key]
        header[name] = entry
        offset = max(offset, stop)
    if draw(st.booleans()):
        header["__metadata__"] = sometimes(draw, st.dictionaries(st.text(max_size=4), st.text(max_size=4)),
                                           json_values)
    data_size = max(offset + sometimes(draw, st.just(0), st.integers(-2, 2)), 0)
    data = draw(st.sampled_from([bytes(data_size), bytes(range(256)) * (data_size // 256 + 1)]))[:data_size]
    return with_length(json.dumps(header).encode() + b" " * draw(st.integers(0, 7)), data)


def with_length(header: bytes, data: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header + data


@PROPERTY
@given(header=json_values, data=st.binary(max_size=32))
def test_random_json_headers(scratch, header, data):
    load_or_refuse(scratch, with_length(json.dumps(header).encode(), data))


@PROPERTY
@given(blob=near_valid())
def test_near_valid_headers(scratch, blob):
    load_or_refuse(scratch, blob)
