"""Bad data: every bad archive, image or dataset file gives one clear error naming it (and the
entry inside it), exit status 2 and no output; bombs are refused before they are decoded."""

import io
import os
import pickle
import re
import struct
import subprocess
import sys
import warnings
import zipfile
import zlib

import numpy as np
import pytest
import yaml
from PIL import Image

from simudy.config import read_yaml
from simudy.data import Dataset, save_dataset
from tests.conftest import ROOT, run_cli

REGISTRY = ROOT / "params/experiments.yaml"


# -- building bad inputs ----------------------------------------------------------------------


def _png(value=0, size=(4, 4), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, (value,) * len(Image.new(mode, (1, 1)).getbands())).save(buf, "PNG")
    return buf.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims `width` x `height` pixels and holds none: Pillow opens it lazily."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _good(root="root", classes=("cat", "dog"), **image) -> dict[str, bytes]:
    """Members of a valid image folder: two images per class and split."""
    return {f"{root}/{split}/{c}/{k}.png": _png(40 * ci + k, **image)
            for split in ("train", "test") for ci, c in enumerate(classes) for k in range(2)}


def _zip(path, members: dict[str, bytes | None], compression=zipfile.ZIP_STORED):
    """`members`: entry name -> bytes, or None for a directory entry."""
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w", compression) as zf:
        warnings.simplefilter("ignore", UserWarning)  # duplicate names, on purpose
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name) if data is None else name, data or b"")
    return path


def _patch_central_entry(path, name: str, offset: int, fmt: str, value: int):
    """Overwrite one field of `name`'s central directory record (the headers zipfile trusts)."""
    raw = bytearray(path.read_bytes())
    at = raw.find(b"PK\x01\x02")
    while raw[at + 46: at + 46 + len(name)] != name.encode():
        at = raw.find(b"PK\x01\x02", at + 4)
    struct.pack_into(fmt, raw, at + offset, value)
    path.write_bytes(bytes(raw))


def _registry(tmp_path, entry: dict):
    reg = read_yaml(REGISTRY)
    reg["datasets"]["toy"] = entry
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump(reg, sort_keys=False))
    return path


def _folder(tmp_path, members: dict[str, bytes | None]):
    root = tmp_path / "folder"
    for name, data in members.items():
        target = root / name
        if data is None:
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    return root


def _imagefolder(path, **extra) -> dict:
    return {"source": "imagefolder", "path": str(path), **extra}


# -- the corpus: (registry entry, environment, texts the message must hold) ------------------


def not_a_zip(t):
    (t / "data.zip").write_text("hello")
    return _imagefolder(t / "data.zip"), {}, [f"{t / 'data.zip'}: neither a directory nor a readable .zip"]


def truncated_zip(t):
    raw = _zip(t / "data.zip", _good()).read_bytes()
    (t / "data.zip").write_bytes(raw[: len(raw) // 2])
    return _imagefolder(t / "data.zip"), {}, ["data.zip: neither a directory nor a readable .zip"]


def corrupt_member(t):
    path = _zip(t / "data.zip", _good())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("root/train/dog/1.png")
    raw = bytearray(path.read_bytes())
    raw[info.header_offset + 30 + len(info.filename) + 40] ^= 0xFF  # a byte of the stored data
    path.write_bytes(bytes(raw))
    return _imagefolder(path), {}, ["data.zip: 'root/train/dog/1.png': cannot read it from the zip", "CRC"]


def header_lies_about_size(t):
    members = {**_good(), "root/train/cat/0.png": _png(size=(4, 4)) + bytes(5000)}
    path = _zip(t / "data.zip", members, zipfile.ZIP_DEFLATED)
    _patch_central_entry(path, "root/train/cat/0.png", 24, "<I", 100)  # uncompressed size
    return _imagefolder(path), {}, ["'root/train/cat/0.png': cannot read it from the zip"]


def encrypted_member(t):
    path = _zip(t / "data.zip", _good())
    _patch_central_entry(path, "root/test/cat/0.png", 8, "<H", 1)  # flag bit 0: encrypted
    return _imagefolder(path), {}, ["'root/test/cat/0.png': encrypted (password-protected)"]


def empty_zip(t):
    path = _zip(t / "data.zip", {})
    return _imagefolder(path), {}, ["data.zip: no images at <root>/{train,test}/<class>/<file>"]


def missing_path(t):
    return _imagefolder(t / "nowhere.zip"), {}, [
        f"{t / 'nowhere.zip'}: not found (the local copy of dataset 'toy', from datasets.toy.path)"]


def traversal(t):
    path = _zip(t / "data.zip", {**_good(), "../../root/train/cat/x.png": _png()})
    return _imagefolder(path), {}, ["'../../root/train/cat/x.png': an entry path that is absolute or leaves"]


def absolute_entry(t):
    path = _zip(t / "data.zip", {**_good(), "/root/train/cat/x.png": _png()})
    return _imagefolder(path), {}, ["'/root/train/cat/x.png': an entry path that is absolute or leaves"]


def backslash_entry(t):
    path = _zip(t / "data.zip", {**_good(), "root\\train\\cat\\x.png": _png()})
    return _imagefolder(path), {}, ["an entry path that is absolute or leaves the archive's root (backslash"]


def image_without_class_folder(t):
    path = _zip(t / "data.zip", {**_good(), "root/train/x.png": _png()})
    return _imagefolder(path), {}, ["'root/train/x.png': an image outside root/{train,test}/<class>/<file>"]


def image_nested_too_deep(t):
    path = _zip(t / "data.zip", {**_good(), "root/train/cat/more/x.png": _png()})
    return _imagefolder(path), {}, ["'root/train/cat/more/x.png': an image outside root/{train,test}/"]


def two_roots(t):
    path = _zip(t / "data.zip", {**_good("a"), **_good("b")})
    return _imagefolder(path), {}, ["images under two roots, e.g. 'a/train/cat/0.png' and 'b/train/cat/0.png'"]


def empty_class_as_zip_entries(t):
    path = _zip(t / "data.zip", {**_good(), "root/train/emu/": None, "root/test/emu/": None})
    return _imagefolder(path), {}, ["data.zip: class folder(s) ['emu'] hold no images in root/train/ or root/test/"]


def empty_class_as_directories(t):
    path = _folder(t, {**_good(), "root/train/emu": None, "root/test/emu": None})
    return _imagefolder(path), {}, ["folder: class folder(s) ['emu'] hold no images"]


def class_missing_in_test(t):
    path = _zip(t / "data.zip", {**_good(), "root/train/emu/0.png": _png()})
    return _imagefolder(path), {}, ["data.zip: split 'test' has no images for class(es) ['emu']"]


def no_test_split(t):
    path = _zip(t / "data.zip", {k: v for k, v in _good().items() if "/test/" not in k})
    return _imagefolder(path), {}, ["data.zip: no images under root/test/<class>/"]


def duplicate_entry(t):
    path = t / "data.zip"
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w") as zf:
        warnings.simplefilter("ignore", UserWarning)
        for name, data in [*_good().items(), ("root/train/cat/0.png", _png(255))]:
            zf.writestr(name, data)
    return _imagefolder(path), {}, ["'root/train/cat/0.png': the zip holds two entries of this name"]


def mixed_sizes(t):
    path = _zip(t / "data.zip", {**_good(), "root/test/dog/1.png": _png(size=(5, 3))})
    return _imagefolder(path), {}, ["images differ in size", "'root/train/cat/0.png' is 4x4",
                                    "'root/test/dog/1.png' is 5x3"]


def undecodable_entry(t):
    path = _zip(t / "data.zip", {**_good(), "root/test/dog/0.png": b"this is not a picture"})
    return _imagefolder(path), {}, ["data.zip: 'root/test/dog/0.png': not an image file that Pillow can read"]


def truncated_image(t):
    noisy = np.random.default_rng(0).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noisy).save(buf, "PNG")
    path = _zip(t / "data.zip", {**_good(), "root/train/dog/0.png": buf.getvalue()[:60]})
    return _imagefolder(path), {}, ["'root/train/dog/0.png': cannot decode the image (image file is truncated"]


def too_many_bytes(t):
    path = _zip(t / "data.zip", _good())
    return _imagefolder(path, max_image_bytes=50), {}, ["'root/train/cat/0.png': larger than max_image_bytes (50"]


def too_many_pixels(t):
    path = _zip(t / "data.zip", _good())
    return _imagefolder(path, max_image_pixels=10), {}, [
        "'root/train/cat/0.png': 4x4 pixels, more than max_image_pixels (10)"]


def pillow_bomb_limit(t):
    path = _zip(t / "data.zip", {**_good(), "root/train/cat/0.png": _png_header(20000, 20000)})
    return _imagefolder(path, max_image_pixels=2**40), {}, [
        "'root/train/cat/0.png': too many pixels (Pillow's decompression bomb limit)"]


def float_pixels(t):
    buf = io.BytesIO()
    Image.new("F", (4, 4), 0.5).save(buf, "TIFF")
    path = _zip(t / "data.zip", {**_good(), "root/train/cat/9.tif": buf.getvalue()})
    return _imagefolder(path), {}, ["'root/train/cat/9.tif': floating-point pixels (mode F)"]


def wide_integer_pixels(t):
    buf = io.BytesIO()
    Image.fromarray(np.full((4, 4), 70000, np.int32)).save(buf, "TIFF")
    path = _zip(t / "data.zip", {**_good(), "root/train/cat/9.tif": buf.getvalue()})
    return _imagefolder(path), {}, [
        "'root/train/cat/9.tif': cannot decode the image (integer pixels outside 0..65535 in mode I)"]


def digits_with_a_local_copy(t):
    return {"source": "digits"}, {"SIMUDY_DATA_TOY": str(t)}, [
        "SIMUDY_DATA_TOY is set, but dataset 'toy' is scikit-learn's bundled digits", "unset SIMUDY_DATA_TOY"]


def local_copy_not_found(t):
    return {"source": "cifar10"}, {"SIMUDY_DATA_TOY": str(t / "gone.zip")}, [
        f"{t / 'gone.zip'}: not found (the local copy of dataset 'toy', from SIMUDY_DATA_TOY)"]


def mean_of_the_wrong_length(t):
    path = _zip(t / "data.zip", _good(mode="L"))
    return _imagefolder(path, mean=[0.5] * 3, std=[0.2] * 3), {}, [
        "dataset 'toy': mean and std need one value per channel of the images (1), got 3 and 3"]


def mean_without_std(t):
    path = _zip(t / "data.zip", _good())
    return _imagefolder(path, mean=[0.5] * 3), {}, ["dataset 'toy': give both mean and std, or neither"]


def constant_images(t):
    members = {name: _png(7) for name in _good()}
    return _imagefolder(_zip(t / "data.zip", members)), {}, [
        "dataset 'toy': normalisation mean [0.02745, 0.02745, 0.02745] and std [0, 0, 0]: std must be positive"]


def classes_out_of_range(t):
    path = _zip(t / "data.zip", _good())
    return _imagefolder(path, classes=[0, 5]), {}, ["dataset 'toy': classes [0, 5] must be distinct indices into"]


FETCH_CASES = {f.__name__: f for f in [
    not_a_zip, truncated_zip, corrupt_member, header_lies_about_size, encrypted_member, empty_zip, missing_path,
    traversal, absolute_entry, backslash_entry, image_without_class_folder, image_nested_too_deep, two_roots,
    empty_class_as_zip_entries, empty_class_as_directories, class_missing_in_test, no_test_split, duplicate_entry,
    mixed_sizes, undecodable_entry, truncated_image, too_many_bytes, too_many_pixels, pillow_bomb_limit,
    float_pixels, wide_integer_pixels, digits_with_a_local_copy, local_copy_not_found, mean_of_the_wrong_length,
    mean_without_std, constant_images, classes_out_of_range,
]}


def _assert_clean_refusal(code: int, err: str, expected: list[str], out_dir):
    assert code == 2, err
    for text in expected:
        assert text in err
    assert "Traceback" not in err and "allow_pickle" not in err
    assert not re.search(r"<[\w.]+ ", err), "a Python object's repr"
    assert not out_dir.exists() or not any(out_dir.iterdir())


@pytest.mark.bad_input
@pytest.mark.parametrize("case", list(FETCH_CASES))
def test_fetch_data_refuses(case, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SIMUDY_DATA_TOY", raising=False)
    entry, env, expected = FETCH_CASES[case](tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "out" / "toy.npz"
    code = run_cli("fetch-data", "--registry", _registry(tmp_path, entry), "--dataset", "toy", "--out", out)
    _assert_clean_refusal(code, capsys.readouterr().err, expected, out.parent)


# -- dataset files read by a later stage ------------------------------------------------------


def _dataset(**change) -> Dataset:
    fields = dict(images=np.zeros((4, 2, 2, 1), np.uint8), labels=np.array([0, 1, 0, 1]),
                  split=np.array(["train", "train", "test", "test"]), class_names=["a", "b"],
                  source_ids=np.array(["0", "1", "2", "3"]), mean=np.array([0.5], np.float32),
                  std=np.array([0.25], np.float32), meta={"schema": 1, "dataset": "toy"})
    return Dataset(**{**fields, **change})


def _arrays(**change) -> dict:
    ds = _dataset()
    arrays = dict(images=ds.images, labels=ds.labels, split=ds.split, class_names=np.array(ds.class_names),
                  source_ids=ds.source_ids, mean=ds.mean, std=ds.std, meta=np.array('{"schema": 1}'))
    return {**arrays, **change}


def _write(path, what):
    if isinstance(what, bytes):
        path.write_bytes(what)
    elif isinstance(what, Dataset):
        save_dataset(path, what)
    else:
        np.savez(path, **what)


DATASET_CASES = {
    "garbage": (b"not numpy at all", "not a simudy dataset file (not an .npz archive)"),
    "pickle": (pickle.dumps({"images": [1, 2]}), "holds pickled Python objects, not a simudy dataset file"),
    "npy_array": (b"\x93NUMPY\x01\x00" + bytes(60), "not a simudy dataset file (not an .npz archive)"),
    "object_array": (_arrays(labels=np.array([0, "x", None, 1], object)), "holds Python objects"),
    "truncated_npz": (None, "not a simudy dataset file"),
    "labels_out_of_range": (_dataset(labels=np.array([0, 1, 2, 1])), "labels must be integers in 0..1"),
    "negative_label": (_dataset(labels=np.array([0, -1, 0, 1])), "labels must be integers in 0..1"),
    "float_labels": (_arrays(labels=np.array([0.0, 1.0, 0.0, 1.0])), "labels must be integers"),
    "unknown_split": (_dataset(split=np.array(["train", "val", "test", "test"])), "split holds ['val']"),
    "labels_short": (_arrays(labels=np.array([0, 1])), "labels has shape (2,), expected (4,) for 4 images"),
    "images_float": (_arrays(images=np.zeros((4, 2, 2, 1))), "images must be uint8 [N, H, W, C]"),
    "no_images": (_arrays(images=np.zeros((0, 2, 2, 1), np.uint8)), "images must be uint8 [N, H, W, C]"),
    "mean_wrong_length": (_dataset(mean=np.zeros(3, np.float32)), "mean must hold one finite float per channel (1)"),
    "nan_std": (_dataset(std=np.array([np.nan], np.float32)),
                "std must hold one finite float per channel (1), got [nan]"),
    "zero_std": (_dataset(std=np.zeros(1, np.float32)), "std must be positive"),
    "duplicate_class_names": (_dataset(class_names=["a", "a"]), "class_names must be a non-empty list of distinct"),
    "meta_not_json": (_arrays(meta=np.array("{not json")), "meta must be a string holding a JSON object"),
    "meta_not_a_string": (_arrays(meta=np.zeros(3)), "meta must be a string holding a JSON object"),
    "old_schema": (_dataset(meta={"schema": 0}), "dataset schema 0, expected 1"),
    "missing_arrays": ({"images": np.zeros((1, 2, 2, 1), np.uint8)}, "dataset file lacks"),
}


@pytest.mark.bad_input
@pytest.mark.parametrize("case", list(DATASET_CASES))
def test_a_bad_dataset_file_is_refused_by_the_next_stage(case, tmp_path, capsys):
    what, expected = DATASET_CASES[case]
    data = tmp_path / "data.npz"
    if what is None:  # a valid file cut short
        save_dataset(data, _dataset())
        data.write_bytes(data.read_bytes()[:300])
    else:
        _write(data, what)
    out = tmp_path / "init"
    code = run_cli("pretrain", "--registry", REGISTRY, "--experiment", "demo", "--profile", "smoke",
                   "--data", data, "--out-dir", out)
    _assert_clean_refusal(code, capsys.readouterr().err, [f"{data}: {expected}"], out)


def test_the_corpus_helpers_make_a_valid_dataset(tmp_path, capsys):
    """The corpus's bad files differ from valid ones only where they are meant to."""
    data = tmp_path / "ok.npz"
    save_dataset(data, _dataset())
    reg = _registry(tmp_path, _imagefolder(_zip(tmp_path / "data.zip", _good())))
    assert run_cli("fetch-data", "--registry", reg, "--dataset", "toy", "--out", tmp_path / "toy.npz") == 0
    from simudy.data import load_dataset

    assert len(load_dataset(data)) == 4 and len(load_dataset(tmp_path / "toy.npz")) == 8


# -- bombs: refused before decoding, in a small process ----------------------------------------


def _fetch_in_a_process(tmp_path, archive) -> tuple[int, str, int]:
    """Run `python -m simudy fetch-data` on `archive`; (exit status, stderr, peak RSS in bytes)."""
    out, log = tmp_path / "out" / "toy.npz", tmp_path / "stderr.txt"
    reg = _registry(tmp_path, _imagefolder(archive))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    env.pop("SIMUDY_DATA_TOY", None)
    command = [sys.executable, "-m", "simudy", "fetch-data", "--registry", reg, "--dataset", "toy", "--out", out]
    with open(log, "w") as err:
        # Started from a small wrapper process: a child started straight from this test process
        # inherits its peak RSS (Linux keeps the high-water mark of the memory it replaces at exec).
        proc = subprocess.run([sys.executable, "-c", _MEASURE, *map(str, command)], stderr=err, env=env,
                              capture_output=False, stdout=subprocess.PIPE, text=True, check=True)
    status, maxrss = map(int, proc.stdout.split())
    assert not out.exists() and not (tmp_path / "out").exists()
    return status, log.read_text(), maxrss * 1024


_MEASURE = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(child.pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


@pytest.mark.slow
@pytest.mark.bad_input
def test_a_zip_of_huge_pngs_is_refused_from_the_headers(tmp_path):
    buf = io.BytesIO()
    Image.new("L", (9000, 9000)).save(buf, "PNG", compress_level=9)
    bomb = {f"root/{split}/cat/{k}.png": buf.getvalue() for split in ("train", "test") for k in range(3)}
    path = _zip(tmp_path / "pixels.zip", bomb)
    assert path.stat().st_size < 2**20
    code, err, rss = _fetch_in_a_process(tmp_path, path)
    assert code == 2 and "pixels.zip: 'root/train/cat/0.png': 9000x9000 pixels, more than max_image_pixels" in err
    assert rss < 500 * 2**20, f"peak RSS {rss / 2**20:.0f} MiB"


@pytest.mark.slow
@pytest.mark.bad_input
def test_a_zip_with_a_gigabyte_member_is_refused_before_reading(tmp_path):
    path = tmp_path / "bytes.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in _good().items():
            zf.writestr(name, data)
        with zf.open("root/train/cat/2.png", "w", force_zip64=True) as fh:
            zeros = bytes(2**24)
            for _ in range(64):
                fh.write(zeros)
    assert path.stat().st_size < 2 * 2**20
    code, err, rss = _fetch_in_a_process(tmp_path, path)
    assert code == 2 and "bytes.zip: 'root/train/cat/2.png': larger than max_image_bytes (67108864 bytes)" in err
    assert rss < 500 * 2**20, f"peak RSS {rss / 2**20:.0f} MiB"
