"""Checkpoint files, bad and good: every crafted, damaged or unsafe file gets one SimudyError naming
it (exit status 2 through the CLI, nothing written), and no valid file is refused."""

import json
import math
import pickle
import re
import resource
import signal
import struct
import zipfile

import pytest
import torch
from safetensors.torch import save, save_file

from simudy import checkpoints
from simudy.checkpoints import import_torch_checkpoint, load_into, load_weights, save_weights
from simudy.errors import SimudyError
from tests.conftest import reconstruct_demo, run_cli


def craft(header, data: bytes = b"", length: int | None = None) -> bytes:
    """A safetensors-shaped file: 8-byte length, the header (JSON unless bytes), the data."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def f32(offsets=(0, 4), shape=(1,), **extra) -> dict:
    return {"dtype": "F32", "shape": list(shape), "data_offsets": list(offsets), **extra}


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


# -- a victim whose checkpoint is bad: `simudy reconstruct` refuses it --------------------------


def _write(data: bytes):
    return lambda path: path.write_bytes(data)


def _sparse_header_over_limit(path):
    with open(path, "wb") as fh:  # a sparse file: the length fits in it, yet exceeds safetensors' limit
        fh.write(struct.pack("<Q", checkpoints.MAX_HEADER_BYTES + 1))
        fh.truncate(checkpoints.MAX_HEADER_BYTES + 100)


def _as_directory(path):
    path.unlink()
    path.mkdir()


def _edit_state(edit):
    def write(path):
        state = load_weights(path)
        edit(state)
        save_weights(path, state)
    return write


def _to_float64(state):
    for k in state:
        state[k] = state[k].double()


def _infinite(state):
    state["out.bias"][1] = math.inf


VICTIM_CASES = {
    "header-is-a-json-list": (_write(craft([1, 2])), "invalid type: sequence, expected struct"),
    "tensor-without-data-offsets": (_write(craft({"a": {"dtype": "F32", "shape": [1]}}, bytes(4))),
                                    "missing field `data_offsets`"),
    "unknown-dtype": (_write(craft({"a": {**f32(), "dtype": "F99"}}, bytes(4))), "unknown variant `F99`"),
    "offsets-as-strings": (_write(craft({"a": f32(offsets=("0", "4"))}, bytes(4))), "invalid type: string"),
    "negative-shape": (_write(craft({"a": f32(shape=(-1,))}, bytes(4))), "invalid value: integer `-1`"),
    "shape-disagrees-with-offsets": (_write(craft({"a": f32(shape=(2,))}, bytes(4))),
                                     "invalid shape, data type, or offset"),
    "offsets-past-the-end": (_write(craft({"a": f32(offsets=(0, 4))}, bytes(2))),
                             "truncated (tensor data ends 2 bytes past the end of the file)"),
    "bytes-after-the-data": (_write(craft({"a": f32()}, bytes(12))), "8 bytes after the last tensor's data"),
    "overlapping-tensors": (_write(craft({"a": f32(), "b": f32()}, bytes(4))), "invalid offset for tensor"),
    "gap-between-tensors": (_write(craft({"a": f32(offsets=(4, 8))}, bytes(8))), "invalid offset for tensor"),
    "metadata-value-not-a-string": (_write(craft({"__metadata__": {"step": 3}, "a": f32()}, bytes(4))),
                                    "invalid type: integer `3`, expected a string"),
    "tensor-named-twice": (_write(craft(b'{"a": ' + json.dumps(f32()).encode() + b', "a": '
                                        + json.dumps(f32()).encode() + b"}", bytes(4))),
                           "the header names 'a' twice"),
    "absurd-header-length": (_write(craft(b"{}", length=2**63)),
                             "truncated or not safetensors (header says 9223372036854775808 bytes"),
    "header-over-safetensors-limit": (_sparse_header_over_limit, "safetensors allows 100000000"),
    "zero-header-length": (_write(bytes(8)), "EOF while parsing"),
    "header-not-utf8": (_write(craft(b'{"\xff": 1}')), "invalid UTF-8 in header"),
    "empty-file": (_write(b""), "truncated (0 bytes)"),
    "text-file": (_write(b"these are not the weights you are looking for"), "truncated or not safetensors"),
    "no-tensors": (_write(save({})), "holds no tensors"),
    "unsupported-dtype": (_write(save({"a": torch.zeros(2, dtype=torch.complex64)})),
                          "tensor 'a' has dtype C64, which simudy does not load"),
    "infinite-value": (_edit_state(_infinite), "tensor 'out.bias' contains NaN or infinite values"),
    "a-directory": (_as_directory, "is a directory, not a checkpoint file"),
    "torch-zip": (lambda path: torch.save({"w": torch.zeros(2)}, path), "is a pickle/torch.save file"),
}


@pytest.mark.bad_input
@pytest.mark.parametrize("case", VICTIM_CASES)
def test_reconstruct_refuses_a_bad_thetaf(case, victim, tmp_path, capsys):
    write, problem = VICTIM_CASES[case]
    path = victim / "thetaf.safetensors"
    write(path)
    code, out = reconstruct_demo(victim, tmp_path)
    err = capsys.readouterr().err
    assert code == 2
    assert f"{path}: " in err and problem in err
    assert "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.bad_input
def test_reconstruct_refuses_a_float64_thetaf_beside_a_float32_theta0(victim, tmp_path, capsys):
    p0, pf = victim / "theta0.safetensors", victim / "thetaf.safetensors"
    _edit_state(_to_float64)(pf)
    code, out = reconstruct_demo(victim, tmp_path)
    assert code == 2
    assert f"{p0} and {pf} differ in dtype at " in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.bad_input
def test_reconstruct_refuses_float64_checkpoints_for_a_float32_model(victim, tmp_path, capsys):
    p0 = victim / "theta0.safetensors"
    _edit_state(_to_float64)(p0)
    _edit_state(_to_float64)(victim / "thetaf.safetensors")
    code, out = reconstruct_demo(victim, tmp_path)
    err = capsys.readouterr().err
    assert code == 2
    assert f"{p0}: tensor " in err and "is float64 but the model's is float32" in err
    assert not out.exists() or not any(out.iterdir())


# -- `simudy import-checkpoint SRC DST` refuses what it cannot convert faithfully and safely -----


def _torch_save(obj, **kwargs):
    return lambda path: torch.save(obj, path, **kwargs)


def _plain_pickle(obj):
    return lambda path: path.write_bytes(pickle.dumps(obj, protocol=2))


def _zip_without_torch(path):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("notes.txt", "hello")


def _truncated_torch_zip(path):
    torch.save({"w": torch.zeros(100)}, path)
    path.write_bytes(path.read_bytes()[:300])


IMPORT_CASES = {
    "nan-tensor": (_torch_save({"w": torch.tensor([1.0, math.nan])}), "tensor 'w' contains NaN or infinite"),
    "infinite-tensor": (_torch_save({"net": {"w": torch.tensor([math.inf])}}), "tensor 'w' contains NaN or infinite"),
    "empty-state-dict": (_torch_save({}), "holds no tensors; nothing to import"),
    "non-tensor-value": (_torch_save({"w": torch.zeros(1), "epoch": 3}), "entry 'epoch' is a int, not a tensor"),
    "not-a-dict": (_torch_save([torch.zeros(1)]), "holds a list, not a state dict of tensors"),
    "integer-names": (_torch_save({0: torch.zeros(1)}), "entry 0 is named by a int; tensor names are strings"),
    "malicious-zip": (_torch_save({"net": Evil()}), "it holds Python objects other than tensors"),
    "malicious-legacy-pickle": (_plain_pickle({"net": Evil()}), "it holds Python objects other than tensors"),
    "zip-that-is-not-torch": (_zip_without_torch, "a zip archive, but not a torch checkpoint"),
    "truncated-torch-zip": (_truncated_torch_zip, "a corrupt or truncated zip archive"),
    "text-file": (lambda path: path.write_text("weights"), "not a torch checkpoint"),
    "empty-file": (lambda path: path.write_bytes(b""), "not a torch checkpoint"),
    "a-directory": (lambda path: path.mkdir(), "is a directory, not a checkpoint file"),
    "missing": (lambda path: None, "checkpoint not found"),
    "already-safetensors": (lambda path: save_file({"w": torch.zeros(1)}, path), "is already a safetensors file"),
    "complex-tensor": (_torch_save({"w": torch.zeros(1, dtype=torch.complex64)}), "has dtype complex64"),
    "sparse-tensor": (_torch_save({"w": torch.zeros(2).to_sparse()}), "is not a dense tensor"),
    "reserved-name": (_torch_save({"__metadata__": torch.zeros(1)}), "which safetensors reserves"),
    "names-collide-without-module-prefix": (_torch_save({"module.w": torch.zeros(1), "w": torch.ones(1)}),
                                            "same name once the 'module.' prefix is dropped"),
}


@pytest.mark.bad_input
@pytest.mark.parametrize("case", IMPORT_CASES)
def test_import_checkpoint_refuses(case, tmp_path, capsys):
    write, problem = IMPORT_CASES[case]
    src, dst = tmp_path / "model.pth", tmp_path / "out" / "model.safetensors"
    write(src)
    code = run_cli("import-checkpoint", src, dst)
    out, err = capsys.readouterr()
    assert code == 2
    assert f"{src}: " in err and problem in err
    assert "pwned" not in out + err
    assert "weights_only" not in err and "likely succeed" not in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.bad_input
@pytest.mark.parametrize("case", ["destination-is-a-directory", "destination-under-a-file"])
def test_import_checkpoint_cannot_write(case, tmp_path, capsys):
    src = tmp_path / "model.pth"
    torch.save({"w": torch.ones(3)}, src)
    blocker = tmp_path / "blocker"
    if case == "destination-is-a-directory":
        blocker.mkdir()
        dst, problem = blocker, "cannot write (is a directory)"
    else:
        blocker.write_text("a file")
        dst, problem = blocker / "model.safetensors", f"cannot write: {blocker} is not a directory"
    assert run_cli("import-checkpoint", src, dst) == 2
    assert f"{dst}: {problem}".lower() in capsys.readouterr().err.lower()  # the OS's words, as it capitalises them
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "model.pth"]
    assert blocker.is_file() or list(blocker.iterdir()) == []


# -- valid files load, and writing fails cleanly ------------------------------------------------


def _with_header_length(length: int) -> bytes:
    """A valid file written by safetensors (which pads headers to a multiple of 8) whose header is
    exactly `length` bytes, reached through the length of a metadata value."""
    tensors = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    bare = save(tensors, metadata={"pad": ""})
    unpadded = len(bare[8:8 + struct.unpack("<Q", bare[:8])[0]].rstrip(b" "))
    blob = save(tensors, metadata={"pad": "x" * (length - unpadded)})
    assert struct.unpack("<Q", blob[:8])[0] == length
    return blob


def _crafted_with_header_length(length: int) -> bytes:
    """A valid file, unpadded as the format allows, whose header is exactly `length` bytes."""
    bare = len(json.dumps({"__metadata__": {"pad": ""}, "w": f32()}))
    return craft({"__metadata__": {"pad": "x" * (length - bare)}, "w": f32()}, struct.pack("<f", 1.5))


def test_header_lengths_that_look_like_pickle_markers_load(tmp_path):
    """A header length 128 mod 256 starts with 0x80, the pickle marker: such files are valid."""
    path = tmp_path / "w.safetensors"
    for length in range(128, 128 + 256 * 8, 8):
        path.write_bytes(_with_header_length(length))
        assert load_weights(path)["w"].tolist() == [[0, 1, 2], [3, 4, 5]]
    for length in list(range(256, 512)) + [128 + 256 * k for k in range(8)]:
        path.write_bytes(_crafted_with_header_length(length))
        assert load_weights(path)["w"].tolist() == [1.5]


def test_import_writes_files_that_load_whatever_their_header_length(tmp_path):
    src = tmp_path / "model.pth"
    for n in range(1, 40):  # tensor names of growing length move the header length through many residues
        torch.save({"module." + "w" * n: torch.full((2,), float(n))}, src)
        assert import_torch_checkpoint(src, tmp_path / "w.safetensors") == 1
        assert load_weights(tmp_path / "w.safetensors")["w" * n].tolist() == [n, n]
    ok = tmp_path / "ok.safetensors"
    ok.write_bytes(_with_header_length(0x280))  # starts 80 02: a pickle's first two bytes
    with pytest.raises(SimudyError, match="is already a safetensors file"):
        import_torch_checkpoint(ok, tmp_path / "x.safetensors")


def test_import_keeps_tied_weights_and_legacy_files(tmp_path):
    src, dst = tmp_path / "model.pth", tmp_path / "w.safetensors"
    shared = torch.arange(4.0)
    torch.save({"state_dict": {"a": shared, "b": shared}}, src)
    assert import_torch_checkpoint(src, dst) == 2
    assert load_weights(dst)["b"].tolist() == [0, 1, 2, 3]
    torch.save({"w": torch.ones(2)}, src, _use_new_zipfile_serialization=False)
    assert import_torch_checkpoint(src, dst) == 1


def test_save_weights_writes_what_safetensors_writes(tmp_path):
    state = {"a": torch.randn(3, 4), "b": torch.arange(5), "c": torch.randn(2).double()}
    save_file(state, tmp_path / "ref.safetensors", metadata={"k": "v"})
    save_weights(tmp_path / "ours.safetensors", state, metadata={"k": "v"})
    assert (tmp_path / "ours.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes()


def test_save_weights_on_a_failing_write_names_the_reason_and_leaves_nothing(tmp_path, monkeypatch):
    """A file-size limit makes the OS refuse the write part-way, as a full disk would."""
    monkeypatch.setenv("SIMUDY_TMP", str(tmp_path / "tmp"))
    path = tmp_path / "out" / "w.safetensors"
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, old_limit[1]))
    try:
        with pytest.raises(SimudyError, match=re.compile(f"^{path}: cannot write \\(file too large\\)", re.I)):
            save_weights(path, {"w": torch.zeros(1000)})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    assert [p for p in tmp_path.rglob("*") if not p.is_dir()] == []


def test_a_panic_in_the_reader_is_a_simudy_error(tmp_path, monkeypatch):
    PanicException = type("PanicException", (BaseException,), {})  # pyo3's, which is not importable

    def panicking(*args, **kwargs):
        raise PanicException("index out of bounds")

    path = tmp_path / "w.safetensors"
    save_file({"w": torch.zeros(1)}, path)
    monkeypatch.setattr(checkpoints, "safe_open", panicking)
    with pytest.raises(SimudyError, match="the safetensors reader failed: index out of bounds"):
        load_weights(path)


def test_load_into_refuses_another_dtype_than_the_model(tmp_path):
    model = torch.nn.Linear(2, 1)
    state = {k: v.double() for k, v in model.state_dict().items()}
    with pytest.raises(SimudyError, match=r"w\.pt: tensor 'bias' is float64 but the model's is float32"):
        load_into(model, state, tmp_path / "w.pt")
