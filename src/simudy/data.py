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

Dataset order is the order of the rows within a split. For `cifar10` and `svhn` it is the
official order and `source_ids` is the index within the split; for `digits` it is scikit-learn's
order and the id is the index in `load_digits()`; for `imagefolder` and `tinyimagenet` the
official interleaving of classes is not known, so rows are ordered by (rank of the file within
its class, class), which keeps every prefix balanced, and the id is the file's path inside the
folder or zip. Tiny ImageNet's test split is its labelled validation set. An `imagenet_sample`
(one image per ImageNet class, `<wnid>_<name>.JPEG`) has one row per class, in wnid order, all in
the train split, each resized and centre-cropped to the dataset's `image_size`.

An image folder (a directory or a .zip) holds `<root>/{train,test}/<class>/<file>` under one
common root, which may be nested. Image files anywhere else, entries that leave the archive
(absolute paths, `..`) and class folders without images are refused; other files (README,
wnids.txt) and hidden or `__MACOSX` entries are ignored. Each file is held to `max_image_bytes`
and its header to `max_image_pixels` before it is decoded. The images keep one channel when all
of them are greyscale (16-bit greyscale scaled to 8 bits) and are RGB otherwise; the dataset's
`channels` forces 1 (luma) or 3.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import tarfile
import urllib.request
import warnings
import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import numpy as np

from simudy import svhn
from simudy.config import DatasetConfig
from simudy.errors import SimudyError
from simudy.io import atomic_path

SCHEMA_VERSION = 1
SPLITS = ("train", "test")
FOLDERS = {"train": "train", "test": "test"}  # an image folder's folder name -> split
TINY_IMAGENET_FOLDERS = {"train": "train", "val": "test"}
LOCAL_ONLY = ("imagefolder", "imagenet_sample", "cola")  # sources with no download (here)
TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_IMAGENET_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
GREY_MODES = {"1", "L", "LA"}  # and the integer modes "I", "I;16", ... (16-bit greyscale)


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
    arrays = _read_npz(path)
    needed = {"images", "labels", "split", "class_names", "source_ids", "mean", "std", "meta"}
    if not needed <= arrays.keys():
        raise SimudyError(f"{path}: dataset file lacks {sorted(needed - arrays.keys())}")
    _check_arrays(path, arrays)
    ds = Dataset(
        images=arrays["images"],
        labels=arrays["labels"].astype(np.int64),
        split=arrays["split"],
        class_names=[str(c) for c in arrays["class_names"]],
        source_ids=arrays["source_ids"],
        mean=arrays["mean"].astype(np.float32),
        std=arrays["std"].astype(np.float32),
        meta=_read_meta(path, arrays["meta"]),
    )
    if split is None:
        return ds
    rows = ds.split == split
    if not rows.any():
        raise SimudyError(f"{path}: no images in split {split!r}")
    return ds.take(rows)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an .npz file; never unpickles (numpy's own errors would suggest doing so)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except FileNotFoundError:
        raise SimudyError(f"{path}: dataset file not found (run `simudy fetch-data`)") from None
    except OSError as err:
        raise SimudyError(f"{path}: cannot read the dataset file ({err.strerror})") from None
    if head[:1] == b"\x80":
        raise SimudyError(f"{path}: holds pickled Python objects, not a simudy dataset file (it is never unpickled)")
    if head[:2] != b"PK":
        raise SimudyError(f"{path}: not a simudy dataset file (not an .npz archive)")
    arrays = {}
    try:
        with np.load(path, allow_pickle=False) as z:
            for key in z.files:
                arrays[key] = z[key]
    except ValueError as err:
        if "allow_pickle" in str(err):  # an object array: numpy would need to unpickle it
            raise SimudyError(f"{path}: holds Python objects, not a simudy dataset file (they are never "
                              "unpickled)") from None
        raise SimudyError(f"{path}: not a simudy dataset file ({err})") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise SimudyError(f"{path}: not a simudy dataset file ({err})") from None
    return arrays


def _check_arrays(path: Path, a: dict[str, np.ndarray]) -> None:
    """Shapes, types and values of the canonical file's arrays (see the module's docstring)."""
    images = a["images"]
    if images.dtype != np.uint8 or images.ndim != 4 or 0 in images.shape:
        raise SimudyError(f"{path}: images must be uint8 [N, H, W, C] with N, H, W, C > 0, "
                          f"got {images.dtype} {images.shape}")
    n, channels = len(images), images.shape[3]
    for key in ("labels", "split", "source_ids"):
        if a[key].shape != (n,):
            raise SimudyError(f"{path}: {key} has shape {a[key].shape}, expected ({n},) for {n} images")
    for key in ("split", "class_names", "source_ids"):
        if a[key].dtype.kind != "U":
            raise SimudyError(f"{path}: {key} must hold strings, got {a[key].dtype}")
    names, labels = a["class_names"], a["labels"]
    if names.ndim != 1 or len(names) == 0 or len(set(names.tolist())) != len(names):
        raise SimudyError(f"{path}: class_names must be a non-empty list of distinct names")
    if labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() >= len(names):
        raise SimudyError(f"{path}: labels must be integers in 0..{len(names) - 1} (one per class name)")
    unknown = sorted(set(a["split"].tolist()) - set(SPLITS))
    if unknown:
        raise SimudyError(f"{path}: split holds {unknown[:3]}, expected only {list(SPLITS)}")
    for key in ("mean", "std"):
        v = a[key]
        if v.dtype.kind != "f" or v.shape != (channels,) or not np.isfinite(v).all():
            raise SimudyError(f"{path}: {key} must hold one finite float per channel ({channels}), got {v.tolist()}")
    if (a["std"] <= 0).any():
        raise SimudyError(f"{path}: std must be positive, got {a['std'].tolist()}")


def _read_meta(path: Path, raw: np.ndarray) -> dict:
    try:
        meta = json.loads(str(raw)) if raw.ndim == 0 and raw.dtype.kind == "U" else None
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict):
        raise SimudyError(f"{path}: meta must be a string holding a JSON object")
    if meta.get("schema") != SCHEMA_VERSION:
        raise SimudyError(f"{path}: dataset schema {meta.get('schema')}, expected {SCHEMA_VERSION}")
    return meta


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
    splits = _read_source(name, cfg)
    splits = {s: _keep_classes(name, raw, cfg.classes) for s, raw in splits.items()}
    mean, std = _norm_constants(name, cfg, splits["train"].images)
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


def source_record(name: str, cfg: DatasetConfig) -> dict:
    """What `fetch` would read for the dataset `name`: a local file's size and md5, a local
    directory's file list with sizes, the download's url and md5, or the scikit-learn version
    for `digits`. Other data gives another record; the same data elsewhere (another machine, a
    fresh clone) gives the same one, so it does not rebuild the dataset."""
    if cfg.source == "digits":
        _local_copy(name, cfg)  # refuses a copy it would not read
        import sklearn

        return {"source": "digits", "scikit-learn": sklearn.__version__}
    local = _local_copy(name, cfg)
    if local is None and cfg.source in LOCAL_ONLY:  # fetch-data will say what to set
        return {"source": cfg.source, "path": None}
    if local is None and cfg.source == "svhn":
        return {"source": "svhn", "files": {svhn.BASE_URL + f: md5 for f, md5 in svhn.FILES.values()}}
    if local is None and cfg.source == "tinyimagenet":
        return {"source": cfg.source, "url": cfg.url or TINY_IMAGENET_URL, "md5": cfg.md5 or TINY_IMAGENET_MD5}
    if local is None:
        return {"source": cfg.source, "url": cfg.url or CIFAR10_URL, "md5": cfg.md5 or CIFAR10_MD5}
    return {"source": cfg.source, **_content_record(local)}


def _local_copy(name: str, cfg: DatasetConfig) -> Path | None:
    """The local copy that `fetch` reads: SIMUDY_DATA_<NAME>, else the registry's `path`; None
    when the data is downloaded."""
    var = f"SIMUDY_DATA_{name.upper()}"
    value = os.environ.get(var)
    if cfg.source == "digits":
        if value:
            raise SimudyError(f"{var} is set, but dataset {name!r} is scikit-learn's bundled digits, which "
                              f"cannot be read from a local copy; unset {var}")
        return None
    origin = var if value else f"datasets.{name}.path"
    value = value or cfg.path
    if not value:
        return None
    path = Path(value)
    if not path.exists():
        raise SimudyError(f"{path}: not found (the local copy of dataset {name!r}, from {origin})")
    return path


def _content_record(path: Path) -> dict:
    """A file's size and md5; for a directory, its files' relative paths and sizes, hashed (a
    file rewritten in place with the same size goes unnoticed: hashing every image would cost
    more than reading them)."""
    if not path.is_dir():
        return {"size": path.stat().st_size, "md5": _md5(path)}
    listing = hashlib.sha256()
    files = 0
    for dirpath, _, filenames in sorted(_walk(path)):
        for name in sorted(filenames):
            full = Path(dirpath, name)
            listing.update(f"{full.relative_to(path).as_posix()}\0{full.stat().st_size}\n".encode())
            files += 1
    return {"files": files, "listing_sha256": listing.hexdigest()}


def _read_source(name: str, cfg: DatasetConfig) -> dict[str, RawSplit]:
    local = _local_copy(name, cfg)
    if cfg.source == "digits":
        return _read_digits()
    if cfg.source == "svhn":
        return _read_svhn(name, local)
    if local is None and cfg.source in LOCAL_ONLY:
        raise SimudyError(f"dataset {name!r}: {cfg.source} source needs a path (or SIMUDY_DATA_{name.upper()})")
    if cfg.source == "imagenet_sample":
        return _read_imagenet_sample(local, cfg)
    if local is None and cfg.source == "tinyimagenet":
        local = _download(cfg.url or TINY_IMAGENET_URL, name)
        if _md5(local) != (cfg.md5 or TINY_IMAGENET_MD5):
            raise SimudyError(f"{local}: md5 checksum mismatch (expected {cfg.md5 or TINY_IMAGENET_MD5}); "
                              "the download is corrupt")
    if local is None:
        return _read_cifar10_tarball(_download(cfg.url or CIFAR10_URL, name), cfg.md5 or CIFAR10_MD5)
    if cfg.source == "cifar10" and local.name.endswith((".tar.gz", ".tgz")):
        return _read_cifar10_tarball(local, cfg.md5 or CIFAR10_MD5)
    return _read_imagefolder(local, cfg)


def _keep_classes(name: str, raw: RawSplit, classes: list[int] | list[str] | None) -> RawSplit:
    if classes is None:
        return raw
    unknown = [c for c in classes if isinstance(c, str) and c not in raw.class_names]
    if unknown:
        raise SimudyError(f"dataset {name!r}: classes {unknown} are not among its {len(raw.class_names)} classes "
                          f"(e.g. {raw.class_names[:3]})")
    classes = [raw.class_names.index(c) if isinstance(c, str) else c for c in classes]
    bad = [c for c in classes if not 0 <= c < len(raw.class_names)]
    if bad or len(set(classes)) != len(classes):
        raise SimudyError(f"dataset {name!r}: classes {classes} must be distinct indices into the "
                          f"{len(raw.class_names)} classes {raw.class_names}")
    remap = {old: new for new, old in enumerate(classes)}
    keep = np.isin(raw.labels, classes)
    labels = np.array([remap[int(v)] for v in raw.labels[keep]], dtype=np.int64)
    names = [raw.class_names[c] for c in classes]
    return RawSplit(raw.images[keep], labels, names, raw.source_ids[keep], raw.provenance)


def _norm_constants(name: str, cfg: DatasetConfig, train_images: np.ndarray):
    channels = train_images.shape[-1]
    if (cfg.mean is None) != (cfg.std is None):
        raise SimudyError(f"dataset {name!r}: give both mean and std, or neither (then both come from the data)")
    if cfg.mean is not None and cfg.std is not None:
        mean, std = np.array(cfg.mean, np.float32), np.array(cfg.std, np.float32)
        if len(mean) != channels or len(std) != channels:
            raise SimudyError(f"dataset {name!r}: mean and std need one value per channel of the images "
                              f"({channels}), got {len(mean)} and {len(std)}")
    else:
        mean = (train_images.mean(axis=(0, 1, 2), dtype=np.float64) / 255.0).astype(np.float32)
        std = (train_images.std(axis=(0, 1, 2), dtype=np.float64) / 255.0).astype(np.float32)
    if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
        shown = " and ".join(f"{k} [{', '.join(f'{v:.4g}' for v in a)}]" for k, a in (("mean", mean), ("std", std)))
        raise SimudyError(f"dataset {name!r}: normalisation {shown}: std must be positive and both finite "
                          "(constant images? give mean and std in the registry)")
    return mean, std


def _read_svhn(name: str, folder: Path | None) -> dict[str, RawSplit]:
    """The official .mat files: from the local folder, else downloaded; each md5-checked."""
    out = {}
    for split, (file, md5) in svhn.FILES.items():
        if folder is None:
            path = _download(svhn.BASE_URL + file, name, svhn.missing_message(name))
        elif folder.is_dir():
            path = folder / file
        else:
            raise SimudyError(f"{folder}: dataset {name!r} (SVHN) is read from a folder holding "
                              f"{' and '.join(f for f, _ in svhn.FILES.values())}, not a file")
        if not path.exists():
            raise SimudyError(f"{path}: not found; {svhn.missing_message(name)}")
        if _md5(path) != md5:
            raise SimudyError(f"{path}: md5 checksum mismatch (expected {md5}): not the official {file}")
        images, labels = svhn.read_split(path, split)
        extra = {"source": "svhn", "origin": str(folder or svhn.BASE_URL)}
        out[split] = RawSplit(images, labels, svhn.CLASS_NAMES, np.arange(len(labels)).astype(str), extra)
    return out


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


def _download(url: str, name: str, missing: str | None = None) -> Path:
    cache = Path(os.environ.get("SIMUDY_CACHE", Path.home() / ".cache" / "simudy"))
    target = cache / PurePosixPath(url).name
    if target.exists():
        return target
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, atomic_path(target) as tmp:
            tmp.write_bytes(resp.read())
    except OSError as err:
        raise SimudyError(f"dataset {name!r}: could not download {url} ({err}); "
                          + (missing or f"set SIMUDY_DATA_{name.upper()} to a local copy")) from None
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


def _read_imagefolder(path: Path, cfg: DatasetConfig) -> dict[str, RawSplit]:
    """Read `<root>/{train,test}/<class>/<file>` from a directory or a zip (root may be nested);
    Tiny ImageNet: its official layout, or an image folder whose test split is `val/`."""
    with (_Folder(path, cfg.max_image_bytes) if path.is_dir() else _Zip(path, cfg.max_image_bytes)) as archive:
        # Provenance names the reader: a CIFAR-10 or other copy read as an image folder says so.
        reader = "tinyimagenet" if cfg.source == "tinyimagenet" else "imagefolder"
        if reader == "tinyimagenet":
            files = _tiny_imagenet_layout(path, archive) or _layout(path, archive.entries(), TINY_IMAGENET_FOLDERS)
        else:
            files = _layout(path, archive.entries())
        classes = sorted(files["train"])
        rows = {split: _rows(by_class, classes) for split, by_class in files.items()}
        names = [rel for split in SPLITS for _, _, rel in rows[split]]
        shape = _survey(archive, names, cfg)
        images = _decode_all(archive, names, shape, cfg.max_image_pixels)
    out, start = {}, 0
    for split in SPLITS:
        end = start + len(rows[split])
        labels = np.array([ci for _, ci, _ in rows[split]], np.int64)
        ids = np.array([rel for _, _, rel in rows[split]])
        out[split] = RawSplit(images[start:end], labels, classes, ids, {"source": reader, "origin": str(path)})
        start = end
    return out


def _rows(by_class: dict[str, list[str]], classes: list[str]) -> list[tuple[int, int, str]]:
    """(rank within class, class index, entry) in dataset order: every prefix stays balanced."""
    return sorted((rank, ci, rel) for ci, c in enumerate(classes) for rank, rel in enumerate(sorted(by_class[c])))


# -- one ImageNet image per class -------------------------------------------------------------


def _read_imagenet_sample(path: Path, cfg: DatasetConfig) -> dict[str, RawSplit]:
    """A flat folder (or zip) of `<wnid>_<name>.<ext>`, one image per class, of any size: each
    resized (shorter side to `image_size`, bicubic) and centre-cropped to image_size², all in
    the train split; the classes are the wnids, sorted (ImageNet-1k's index order)."""
    if cfg.image_size is None:
        raise SimudyError(f"{path}: an imagenet_sample dataset needs image_size (its images differ in size)")
    with (_Folder(path, cfg.max_image_bytes) if path.is_dir() else _Zip(path, cfg.max_image_bytes)) as archive:
        files = _wnid_files(path, archive.entries())
        classes = sorted(files)
        images = np.stack([_fitted(archive, files[c], cfg) for c in classes])
    prov = {"source": cfg.source, "origin": str(path)}
    ids = np.array([files[c] for c in classes])
    empty = np.empty((0, *images.shape[1:]), np.uint8)
    return {"train": RawSplit(images, np.arange(len(classes), dtype=np.int64), classes, ids, prov),
            "test": RawSplit(empty, np.empty(0, np.int64), classes, np.empty(0, str), prov)}


def _wnid_files(path: Path, entries: list[tuple[str, bool]]) -> dict[str, str]:
    files: dict[str, str] = {}
    folders = set()
    for name, is_dir in entries:
        parts = _entry_parts(path, name)
        if is_dir or parts is None or PurePosixPath(name).suffix.lower() not in IMAGE_SUFFIXES:
            continue
        wnid = re.match(r"(n\d{8})_", parts[-1])
        if wnid is None:
            raise SimudyError(f"{path}: {name!r}: expected <wnid>_<name>.<ext>, a wnid being n and 8 digits")
        if wnid[1] in files:
            raise SimudyError(f"{path}: {name!r} and {files[wnid[1]]!r}: two images of class {wnid[1]}")
        files[wnid[1]] = name
        folders.add(parts[:-1])
    if not files:
        raise SimudyError(f"{path}: no images named <wnid>_<name>.<ext>")
    if len(folders) > 1:
        raise SimudyError(f"{path}: images in {len(folders)} folders; expected one flat folder")
    return files


def _fitted(archive: _Archive, name: str, cfg: DatasetConfig) -> np.ndarray:
    from PIL import Image

    size = cfg.image_size
    with _open_image(archive, name, cfg.max_image_pixels) as im:
        w, h = im.size
        scale = size / min(w, h)
        try:
            im = im.convert("RGB").resize((max(size, round(w * scale)), max(size, round(h * scale))),
                                          Image.Resampling.BICUBIC)
        except Exception as err:  # Pillow raises many exception types for damaged image data
            raise SimudyError(f"{archive.path}: {name!r}: cannot decode the image ({err})") from None
        left, top = (im.width - size) // 2, (im.height - size) // 2
        return np.asarray(im.crop((left, top, left + size, top + size)))


# -- Tiny ImageNet's official layout ----------------------------------------------------------


def _tiny_imagenet_layout(path: Path, archive: _Archive) -> dict[str, dict[str, list[str]]] | None:
    """split -> class -> entries, from `<root>/train/<wnid>/images/<file>` and `<root>/val/images/<file>`
    labelled by `<root>/val/val_annotations.txt` (file, wnid, box); None where the archive is not
    in that layout. The test split is the official validation set (the official test set has no labels)."""
    train: dict[str, list[str]] = {}
    roots = set()
    entries = archive.entries()
    for name, is_dir in entries:
        parts = _entry_parts(path, name)
        if not is_dir and parts is not None and len(parts) >= 5 and parts[-4] == "train" and parts[-2] == "images" \
                and PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES:
            train.setdefault(parts[-3], []).append(name)
            roots.add(parts[:-4])
    if not roots:
        return None
    if len(roots) > 1:
        raise SimudyError(f"{path}: Tiny ImageNet's train/ under two roots {sorted('/'.join(r) for r in roots)[:2]}")
    root = "".join(f"{p}/" for p in roots.pop())
    notes = f"{root}val/val_annotations.txt"
    files = {name for name, is_dir in entries if not is_dir}
    if notes not in files:
        raise SimudyError(f"{path}: {notes!r} is missing: Tiny ImageNet's validation labels")
    test: dict[str, list[str]] = {wnid: [] for wnid in train}
    for i, line in enumerate(archive.read(notes).decode(errors="replace").splitlines(), 1):
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in test:
            raise SimudyError(f"{path}: {notes}: line {i}: expected <file> TAB <wnid of a train class>, "
                              f"got {line[:60]!r}")
        image = f"{root}val/images/{fields[0]}"
        if image not in files:
            raise SimudyError(f"{path}: {notes}: line {i}: {image!r} is not in the archive")
        test[fields[1]].append(image)
    return {"train": train, "test": test}


# -- image folders: entries and layout --------------------------------------------------------


class _Archive:
    """A directory or zip of images: its entries, and each file read with a size limit."""

    def __init__(self, path: Path, max_bytes: int):
        self.path, self.max_bytes = path, max_bytes

    def __enter__(self) -> _Archive:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        pass

    def _check_size(self, name: str, size: int) -> None:
        if size > self.max_bytes:
            raise SimudyError(f"{self.path}: {name!r}: larger than max_image_bytes ({self.max_bytes} bytes); "
                              "raise the dataset's max_image_bytes in the registry if the file is genuine")


class _Folder(_Archive):
    def entries(self) -> list[tuple[str, bool]]:
        """(path relative to the folder, is a directory) for everything in it."""
        out = []
        for dirpath, dirnames, filenames in _walk(self.path):
            rel = PurePosixPath(Path(dirpath).relative_to(self.path).as_posix())
            out += [((rel / d).as_posix(), True) for d in dirnames]
            out += [((rel / f).as_posix(), False) for f in filenames]
        return out

    def read(self, name: str) -> bytes:
        try:
            self._check_size(name, (self.path / name).stat().st_size)
            with open(self.path / name, "rb") as fh:
                data = fh.read(self.max_bytes + 1)
        except OSError as err:
            raise SimudyError(f"{self.path}: {name!r}: cannot read it ({err.strerror})") from None
        self._check_size(name, len(data))
        return data


class _Zip(_Archive):
    def __init__(self, path: Path, max_bytes: int):
        super().__init__(path, max_bytes)
        try:
            self._zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as err:
            raise SimudyError(f"{path}: neither a directory nor a readable .zip ({err})") from None
        self._infos: dict[str, zipfile.ZipInfo] = {}
        for info in self._zip.infolist():
            if info.filename in self._infos:  # the zip would hand out only one of them
                self._zip.close()
                raise SimudyError(f"{path}: {info.filename!r}: the zip holds two entries of this name")
            self._infos[info.filename] = info

    def close(self) -> None:
        self._zip.close()

    def entries(self) -> list[tuple[str, bool]]:
        return [(name, info.is_dir()) for name, info in self._infos.items()]

    def read(self, name: str) -> bytes:
        info = self._infos[name]
        self._check_size(name, info.file_size)
        if info.flag_bits & 0x1:
            raise SimudyError(f"{self.path}: {name!r}: encrypted (password-protected); zip the images without one")
        try:
            with self._zip.open(info) as fh:
                data = fh.read(self.max_bytes + 1)  # the header's size may lie
        except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError, ValueError,
                zlib.error) as err:
            raise SimudyError(f"{self.path}: {name!r}: cannot read it from the zip ({err})") from None
        self._check_size(name, len(data))
        return data


def _walk(path: Path):
    """os.walk following links, each directory once (a link to an ancestor would loop), and
    failing on an unreadable directory rather than skipping it."""

    def fail(err: OSError):
        raise SimudyError(f"{err.filename}: cannot list the directory ({err.strerror})")

    seen = set()
    for dirpath, dirnames, filenames in os.walk(path, onerror=fail, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            dirnames.clear()
            continue
        seen.add((st.st_dev, st.st_ino))
        yield dirpath, dirnames, filenames


def _layout(path: Path, entries: list[tuple[str, bool]],
            folders: dict[str, str] = FOLDERS) -> dict[str, dict[str, list[str]]]:
    """split -> class -> entries of its images, for every class folder (empty ones too);
    `folders`: the folder name of each split (folder -> split)."""
    images, dirs = [], set()
    for name, is_dir in entries:
        parts = _entry_parts(path, name)
        if parts is None:
            continue
        dirs.add(parts if is_dir else parts[:-1])
        if not is_dir and PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES:
            images.append((name, parts))
    root = _root(path, images, folders)
    depth, where = len(root), "".join(f"{p}/" for p in root)
    files: dict[str, dict[str, list[str]]] = {s: {} for s in SPLITS}
    for parts in dirs:
        if len(parts) > depth + 1 and parts[:depth] == root and parts[depth] in folders:
            for by_class in files.values():
                by_class.setdefault(parts[depth + 1], [])
    for name, parts in images:
        if len(parts) != depth + 3 or parts[:depth] != root or parts[depth] not in folders:
            raise SimudyError(f"{path}: {name!r}: an image outside {where}{{{','.join(folders)}}}/<class>/<file>; "
                              "move or remove it")
        files[folders[parts[depth]]][parts[depth + 1]].append(name)
    _check_classes(path, where, files, folders)
    return files


def _entry_parts(path: Path, name: str) -> tuple[str, ...] | None:
    """The parts of an entry's path; None for hidden and macOS metadata entries, which are ignored."""
    parts = PurePosixPath(name).parts
    if "\\" in name or name.startswith("/") or ".." in parts or re.match(r"[A-Za-z]:", name):
        raise SimudyError(f"{path}: {name!r}: an entry path that is absolute or leaves the archive's root "
                          "(backslash, drive or '..'); refusing it")
    if any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return None
    return parts


def _root(path: Path, images: list[tuple[str, tuple[str, ...]]], folders: dict[str, str]) -> tuple[str, ...]:
    """The one folder holding the splits' folders (train/ and test/)."""
    roots: dict[tuple[str, ...], str] = {}
    for name, parts in images:
        if len(parts) >= 3 and parts[-3] in folders:
            roots.setdefault(parts[:-3], name)
    shown = "{" + ",".join(folders) + "}"
    if not roots:
        raise SimudyError(f"{path}: no images at <root>/{shown}/<class>/<file>")
    if len(roots) > 1:
        first, second = list(roots.values())[:2]
        raise SimudyError(f"{path}: images under two roots, e.g. {first!r} and {second!r}; expected one "
                          f"<root>/{shown}/<class>/")
    return next(iter(roots))


def _check_classes(path: Path, where: str, files: dict[str, dict[str, list[str]]], folders: dict[str, str]) -> None:
    folder = {split: name for name, split in folders.items()}
    empty = sorted(c for c in files["train"] if not any(files[s][c] for s in SPLITS))
    if empty:
        raise SimudyError(f"{path}: class folder(s) {empty} hold no images in "
                          f"{' or '.join(f'{where}{folder[s]}/' for s in SPLITS)}; add images or remove the folders")
    for split, by_class in files.items():
        if not any(by_class.values()):
            raise SimudyError(f"{path}: no images under {where}{folder[split]}/<class>/")
        missing = sorted(c for c, names in by_class.items() if not names)
        if missing:
            raise SimudyError(f"{path}: split {split!r} has no images for class(es) {missing}")


# -- image folders: decoding ------------------------------------------------------------------


def _survey(archive: _Archive, names: list[str], cfg: DatasetConfig) -> tuple[int, int, int]:
    """(H, W, C) of the dataset from every image's header, before anything is decoded: one size
    for all, and C = cfg.channels, else 1 if every image is greyscale and 3 otherwise."""
    first_of_size: dict[tuple[int, int], str] = {}
    grey = True
    for name in names:
        with _open_image(archive, name, cfg.max_image_pixels) as im:
            first_of_size.setdefault(im.size, name)
            grey = grey and _is_grey(im.mode)
    if len(first_of_size) > 1:
        shown = ", ".join(f"{name!r} is {w}x{h}" for (w, h), name in list(first_of_size.items())[:3])
        raise SimudyError(f"{archive.path}: images differ in size (width x height: {shown}; "
                          f"{len(first_of_size)} sizes in all); resize them to one size first")
    (w, h), = first_of_size
    return h, w, cfg.channels or (1 if grey else 3)


def _decode_all(archive: _Archive, names: list[str], shape: tuple[int, int, int], max_pixels: int) -> np.ndarray:
    images = np.empty((len(names), *shape), np.uint8)
    for i, name in enumerate(names):
        with _open_image(archive, name, max_pixels) as im:
            try:
                pixels = _pixels(im, shape[2])
            except Exception as err:  # Pillow raises many exception types for damaged image data
                raise SimudyError(f"{archive.path}: {name!r}: cannot decode the image ({err})") from None
        if pixels.shape != shape:
            raise SimudyError(f"{archive.path}: {name!r}: decoded to {pixels.shape}, expected {shape}")
        images[i] = pixels
    return images


def _open_image(archive: _Archive, name: str, max_pixels: int):
    """The image opened lazily (header only), refused before decoding if it has too many pixels."""
    from PIL import Image, UnidentifiedImageError

    where = f"{archive.path}: {name!r}"
    data = archive.read(name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise SimudyError(f"{where}: not an image file that Pillow can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise SimudyError(f"{where}: too many pixels (Pillow's decompression bomb limit)") from None
    except Exception as err:  # Pillow raises many exception types for damaged headers
        raise SimudyError(f"{where}: cannot read the image header ({err})") from None
    w, h = im.size
    if w * h > max_pixels:
        raise SimudyError(f"{where}: {w}x{h} pixels, more than max_image_pixels ({max_pixels}); raise the "
                          "dataset's max_image_pixels in the registry if the image is genuine")
    if im.mode == "F":
        raise SimudyError(f"{where}: floating-point pixels (mode F); convert the image to 8 or 16 bits")
    return im


def _is_grey(mode: str) -> bool:
    return mode in GREY_MODES or mode.startswith("I")


def _pixels(im, channels: int) -> np.ndarray:
    """[H, W, channels] uint8: greyscale repeated into RGB, or colour reduced to luma, as asked."""
    if im.mode.startswith("I"):  # 16-bit greyscale (PNG, TIFF, PGM): 0..65535 onto 0..255
        wide = np.asarray(im).astype(np.int64)
        if wide.min() < 0 or wide.max() > 65535:
            raise ValueError(f"integer pixels outside 0..65535 in mode {im.mode}")
        grey = ((wide * 255 + 32767) // 65535).astype(np.uint8)
    elif _is_grey(im.mode):
        grey = np.asarray(im.convert("L"))
    elif channels == 1:
        grey = np.asarray(im.convert("RGB").convert("L"))
    else:
        return np.asarray(im.convert("RGB"))
    return np.repeat(grey[..., None], channels, axis=2)
