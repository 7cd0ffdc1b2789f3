"""fetch-data: turn a source into the canonical dataset file, and pick victim subsets.

Canonical dataset file (`<name>.npz`, read with `allow_pickle=False`), schema version 1:

    images      uint8   [N, H, W, C]   pixels as decoded from the source
    labels      int64   [N]            class index into `class_names`
    split       str     [N]            "train" or "test"
    class_names str     [K]
    source_ids  str     [N]            where each image comes from in its source (see below)
    mean, std   float32 [C]            normalisation constants, from the train split:
                                       x_norm = (x / 255 - mean) / std
    meta        str                    JSON: {"schema": 1, "dataset", "source", provenance...}

Dataset order is the order of the rows within a split. For `cifar10` it is the official order
and `source_ids` is the index within the split; for `digits` it is scikit-learn's order and the
id is the index in `load_digits()`; for `imagefolder` the official interleaving of classes is
not known, so rows are ordered by (rank of the file within its class, class), which keeps every
prefix balanced, and the id is the file's path inside the folder or zip.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import tarfile
import urllib.request
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import numpy as np

from simudy.config import DatasetConfig
from simudy.errors import SimudyError
from simudy.io import atomic_path

SCHEMA_VERSION = 1
SPLITS = ("train", "test")
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class Dataset:
    images: np.ndarray
    labels: np.ndarray
    split: np.ndarray
    class_names: list[str]
    source_ids: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    meta: dict

    def take(self, rows: np.ndarray) -> Dataset:
        """The rows `rows` (indices or a boolean mask), with everything else unchanged."""
        return replace(self, images=self.images[rows], labels=self.labels[rows], split=self.split[rows],
                       source_ids=self.source_ids[rows])

    def grouped(self, groups: dict[str, list[str]]) -> Dataset:
        """Classes merged into `groups` (new name -> old class names), in the order given;
        images of classes in no group are dropped."""
        index = {name: i for i, name in enumerate(self.class_names)}
        unknown = sorted({c for members in groups.values() for c in members} - index.keys())
        if unknown:
            raise SimudyError(f"groups name unknown classes {unknown}; classes: {self.class_names}")
        remap = np.full(len(self.class_names), -1)
        for new, members in enumerate(groups.values()):
            remap[[index[c] for c in members]] = new
        labels = remap[self.labels]
        keep = labels >= 0
        return replace(self.take(keep), labels=labels[keep], class_names=list(groups))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W), the layout the models take."""
        _, h, w, c = self.images.shape
        return (c, h, w)

    def normalised(self, indices: np.ndarray | None = None):
        """Images as float32 tensors [N, C, H, W] in normalised space."""
        import torch

        imgs = self.images if indices is None else self.images[indices]
        x = torch.from_numpy(imgs.astype(np.float32) / 255.0).permute(0, 3, 1, 2)
        mean = torch.from_numpy(self.mean).view(1, -1, 1, 1)
        std = torch.from_numpy(self.std).view(1, -1, 1, 1)
        return ((x - mean) / std).contiguous()


class RawSplit(NamedTuple):
    """One split as a source reader returns it, before normalisation constants are known."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    source_ids: np.ndarray
    provenance: dict


# -- writing and reading the canonical file ---------------------------------------------------


def save_dataset(path: str | Path, ds: Dataset) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                images=ds.images,
                labels=ds.labels,
                split=ds.split.astype(str),
                class_names=np.array(ds.class_names),
                source_ids=ds.source_ids.astype(str),
                mean=ds.mean.astype(np.float32),
                std=ds.std.astype(np.float32),
                meta=np.array(json.dumps(ds.meta, sort_keys=True)),
            )


def load_dataset(path: str | Path, split: str | None = None) -> Dataset:
    """Load a canonical dataset file; with `split`, only that split's rows."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise SimudyError(f"{path}: dataset file not found (run `simudy fetch-data`)") from None
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        raise SimudyError(f"{path}: not a simudy dataset file ({err})") from None
    needed = {"images", "labels", "split", "class_names", "source_ids", "mean", "std", "meta"}
    if not needed <= arrays.keys():
        raise SimudyError(f"{path}: dataset file lacks {sorted(needed - arrays.keys())}")
    images, labels = arrays["images"], arrays["labels"]
    if images.dtype != np.uint8 or images.ndim != 4:
        raise SimudyError(f"{path}: images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}")
    if labels.shape != (len(images),):
        raise SimudyError(f"{path}: {len(labels)} labels for {len(images)} images")
    meta = json.loads(str(arrays["meta"]))
    if meta.get("schema") != SCHEMA_VERSION:
        raise SimudyError(f"{path}: dataset schema {meta.get('schema')}, expected {SCHEMA_VERSION}")
    ds = Dataset(
        images=images,
        labels=labels.astype(np.int64),
        split=arrays["split"],
        class_names=[str(c) for c in arrays["class_names"]],
        source_ids=arrays["source_ids"],
        mean=arrays["mean"].astype(np.float32),
        std=arrays["std"].astype(np.float32),
        meta=meta,
    )
    if split is None:
        return ds
    rows = ds.split == split
    if not rows.any():
        raise SimudyError(f"{path}: no images in split {split!r}")
    return ds.take(rows)


# -- victim subsets ---------------------------------------------------------------------------


def select_subset(labels: np.ndarray, per_class: int, offset: int, num_classes: int) -> np.ndarray:
    """The paper's choice: images offset..offset+per_class-1 of each class, in dataset order."""
    if per_class < 1:
        raise SimudyError(f"empty victim subset: per_class is {per_class}, must be at least 1")
    chosen = []
    for c in range(num_classes):
        rows = np.flatnonzero(labels == c)
        if len(rows) < offset + per_class:
            raise SimudyError(
                f"class {c} has {len(rows)} images, fewer than offset {offset} + per_class {per_class}"
            )
        chosen.append(rows[offset : offset + per_class])
    return np.sort(np.concatenate(chosen))


# -- sources ----------------------------------------------------------------------------------


def fetch(name: str, cfg: DatasetConfig, out: str | Path) -> Dataset:
    """Write the canonical file `out` for the dataset `name`.

    A local copy given in the environment variable SIMUDY_DATA_<NAME> (a directory, a .zip in
    image-folder layout, or the official tarball) takes the place of the download.
    """
    local = os.environ.get(f"SIMUDY_DATA_{name.upper()}")
    splits = _read_source(name, cfg, local)
    splits = {s: _keep_classes(ds, cfg.classes) for s, ds in splits.items()}
    mean, std = _norm_constants(cfg, splits["train"].images)
    names = {tuple(raw.class_names) for raw in splits.values()}
    if len(names) != 1:
        raise SimudyError(f"dataset {name!r}: the splits have different classes {sorted(names)}")
    ds = Dataset(
        images=np.concatenate([raw.images for raw in splits.values()]),
        labels=np.concatenate([raw.labels for raw in splits.values()]),
        split=np.concatenate([np.full(len(raw.labels), s) for s, raw in splits.items()]),
        class_names=list(names.pop()),
        source_ids=np.concatenate([raw.source_ids for raw in splits.values()]),
        mean=mean,
        std=std,
        meta={"schema": SCHEMA_VERSION, "dataset": name, **splits["train"].provenance},
    )
    save_dataset(out, ds)
    return ds


def _read_source(name: str, cfg: DatasetConfig, local: str | None):
    if cfg.source == "digits":
        return _read_digits()
    if cfg.source == "imagefolder" or (local and not local.endswith((".tar.gz", ".tgz"))):
        path = local or cfg.path
        if not path:
            raise SimudyError(f"dataset {name!r}: imagefolder source needs a path (or SIMUDY_DATA_{name.upper()})")
        return _read_imagefolder(Path(path))
    tarball = Path(local) if local else _download(cfg.url or CIFAR10_URL, name)
    return _read_cifar10_tarball(tarball, cfg.md5 or CIFAR10_MD5)


def _keep_classes(raw: RawSplit, classes: list[int] | None) -> RawSplit:
    if classes is None:
        return raw
    remap = {old: new for new, old in enumerate(classes)}
    keep = np.isin(raw.labels, classes)
    labels = np.array([remap[int(v)] for v in raw.labels[keep]], dtype=np.int64)
    names = [raw.class_names[c] for c in classes]
    return RawSplit(raw.images[keep], labels, names, raw.source_ids[keep], raw.provenance)


def _norm_constants(cfg: DatasetConfig, train_images: np.ndarray):
    if cfg.mean is not None and cfg.std is not None:
        return np.array(cfg.mean, np.float32), np.array(cfg.std, np.float32)
    mean = train_images.mean(axis=(0, 1, 2), dtype=np.float64) / 255.0
    std = train_images.std(axis=(0, 1, 2), dtype=np.float64) / 255.0
    return mean.astype(np.float32), std.astype(np.float32)


def _read_digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = d.target.astype(np.int64)
    ids = np.arange(len(labels))
    # scikit-learn ships no split: the last 297 images (1500 onwards) form the test split.
    cut = 1500
    names = [str(c) for c in d.target_names]
    extra = {"source": "digits", "origin": "sklearn.datasets.load_digits"}
    return {
        "train": RawSplit(images[:cut], labels[:cut], names, ids[:cut].astype(str), extra),
        "test": RawSplit(images[cut:], labels[cut:], names, ids[cut:].astype(str), extra),
    }


def _download(url: str, name: str) -> Path:
    cache = Path(os.environ.get("SIMUDY_CACHE", Path.home() / ".cache" / "simudy"))
    target = cache / PurePosixPath(url).name
    if target.exists():
        return target
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, atomic_path(target) as tmp:
            tmp.write_bytes(resp.read())
    except OSError as err:
        raise SimudyError(
            f"dataset {name!r}: could not download {url} ({err}); "
            f"set SIMUDY_DATA_{name.upper()} to a local copy"
        ) from None
    return target


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """The official CIFAR-10 batches are pickles of dicts of lists and numpy arrays; refuse
    anything else so that a tampered file cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_cifar10_tarball(path: Path, md5: str):
    if not path.exists():
        raise SimudyError(f"{path}: file not found")
    if _md5(path) != md5:
        raise SimudyError(f"{path}: md5 checksum mismatch (expected {md5}); the download is corrupt")
    try:
        return _unpack_cifar10(path, md5)
    except (pickle.UnpicklingError, tarfile.TarError, KeyError, ValueError, EOFError) as err:
        raise SimudyError(f"{path}: not a valid CIFAR-10 python tarball ({err})") from None


def _unpack_cifar10(path: Path, md5: str) -> dict[str, RawSplit]:
    batches = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    out = {}
    with tarfile.open(path, "r:gz") as tar:
        members = {PurePosixPath(m.name).name: m for m in tar.getmembers()}
        names_raw = _ArrayOnlyUnpickler(tar.extractfile(members["batches.meta"]), encoding="bytes").load()
        names = [n.decode() for n in names_raw[b"label_names"]]
        for split, files in batches.items():
            xs, ys = [], []
            for f in files:
                d = _ArrayOnlyUnpickler(tar.extractfile(members[f]), encoding="bytes").load()
                xs.append(np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
                ys.append(np.asarray(d[b"labels"], np.int64))
            images, labels = np.concatenate(xs), np.concatenate(ys)
            extra = {"source": "cifar10", "origin": str(path), "md5": md5}
            out[split] = RawSplit(images, labels, names, np.arange(len(labels)).astype(str), extra)
    return out


def _read_imagefolder(path: Path) -> dict[str, RawSplit]:
    """Read `<root>/{train,test}/<class>/<file>` from a directory or a zip (root may be nested)."""
    if not path.exists():
        raise SimudyError(f"{path}: image folder not found")
    files: dict[str, dict[str, list[str]]] = {s: {} for s in SPLITS}  # split -> class -> files
    for rel in _list_folder(path):
        parts = PurePosixPath(rel).parts
        if len(parts) >= 3 and parts[-3] in SPLITS and PurePosixPath(rel).suffix.lower() in IMAGE_SUFFIXES:
            files[parts[-3]].setdefault(parts[-2], []).append(rel)
    classes = sorted(set().union(*files.values()))
    for split, by_class in files.items():
        if not by_class:
            raise SimudyError(f"{path}: no images under {split}/<class>/ (expected <root>/{{train,test}}/<class>/)")
        missing = sorted(set(classes) - set(by_class))
        if missing:
            raise SimudyError(f"{path}: split {split!r} has no images for class(es) {missing}")
    return {split: _folder_split(path, by_class, classes) for split, by_class in files.items()}


def _folder_split(path: Path, by_class: dict[str, list[str]], classes: list[str]) -> RawSplit:
    rows = sorted(  # (rank within class, class index, path): every prefix stays balanced
        (rank, ci, rel) for ci, c in enumerate(classes) for rank, rel in enumerate(sorted(by_class[c]))
    )
    images = _decode_all(path, [r[2] for r in rows])
    labels = np.array([r[1] for r in rows], np.int64)
    provenance = {"source": "imagefolder", "origin": str(path)}
    return RawSplit(images, labels, classes, np.array([r[2] for r in rows]), provenance)


def _list_folder(path: Path) -> list[str]:
    if path.is_dir():
        return [p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()]
    try:
        with zipfile.ZipFile(path) as zf:
            return [n for n in zf.namelist() if not n.endswith("/")]
    except zipfile.BadZipFile:
        raise SimudyError(f"{path}: neither a directory nor a readable .zip") from None


def _decode_all(path: Path, rels: list[str]) -> np.ndarray:
    from PIL import Image

    def decode(data: bytes, rel: str) -> np.ndarray:
        try:
            return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        except OSError as err:
            raise SimudyError(f"{path}: cannot decode image {rel} ({err})") from None

    if path.is_dir():
        arrays = [decode((path / rel).read_bytes(), rel) for rel in rels]
    else:
        with zipfile.ZipFile(path) as zf:
            arrays = [decode(zf.read(rel), rel) for rel in rels]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise SimudyError(f"{path}: images differ in size {sorted(shapes)[:3]}; resize them first")
    return np.stack(arrays)
