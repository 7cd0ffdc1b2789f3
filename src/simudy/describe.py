"""Attack your own model: turn a training script's checkpoints and images into a victim bundle.

`import_victim` converts θ0 and θf saved with `torch.save(model.state_dict())`, never
unpickling code (`checkpoints.import_torch_checkpoint`). `describe_victim` writes `victim.json`
from flags, or from a template victim.json with flags overriding it, and `truth.npz` from the
training images. The images must come in the order the training saw them: SimuDy replays that
order batch by batch. Both commands check the checkpoints against the description and write
nothing unless everything holds.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from simudy.checkpoints import State, check_compatible, import_torch_checkpoint, load_into, load_weights
from simudy.data import SCHEMA_VERSION, Dataset, save_dataset
from simudy.errors import SimudyError
from simudy.io import atomic_path, write_json
from simudy.victim import MetaError, TrainingMeta, build_from_meta, check_meta, load_json, warn_about_recipe

THETAS = ("theta0.safetensors", "thetaf.safetensors")
# What a template victim.json passes on: the description, not the records of how it was made.
DESCRIPTION = ("arch", "model_kwargs", "image_shape", "num_classes", "num_outputs", "class_names", "mean", "std",
               "n_images", "training")
TRAINING = tuple(TrainingMeta.model_fields)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
GREY_MODES = {"1", "L", "LA"}

IMAGES_HELP = (
    "the training images IN THE ORDER THE TRAINING SAW THEM (the simulation replays it): an .npz with uint8 "
    "`images` [N, H, W, C] or [N, H, W] and integer `labels` [N] (optional `class_names`), or a folder "
    "<class>/<file> ordered by file name, numbers by value (2.png before 10.png); greyscale stays one channel"
)


class Truth(NamedTuple):
    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray  # int64 [N]
    class_names: list[str] | None
    source_ids: np.ndarray
    source: str  # "arrays" or "imagefolder"


# -- import -----------------------------------------------------------------------------------


def import_victim(theta0: str | Path, thetaf: str | Path, victim_dir: str | Path) -> None:
    """Convert both checkpoints; write them into `victim_dir` only if both convert and match."""
    victim_dir = Path(victim_dir)
    with tempfile.TemporaryDirectory(prefix="simudy-import-") as tmp:
        converted = [Path(tmp) / name for name in THETAS]
        for src, dst in zip((theta0, thetaf), converted):
            import_torch_checkpoint(src, dst)
        check_pair(load_weights(converted[0]), load_weights(converted[1]), theta0, thetaf)
        for path in converted:
            with atomic_path(victim_dir / path.name) as out:
                shutil.copyfile(path, out)


def check_pair(s0: State, sf: State, p0: str | Path, pf: str | Path) -> None:
    """θ0 and θf of one architecture, and θf trained away from θ0."""
    check_compatible(s0, sf, p0, pf)
    if all(torch.equal(s0[k], sf[k]) for k in s0):
        raise SimudyError(f"{p0} and {pf} hold the same parameters: θ0 must be the model before training and θf "
                          "after it")


# -- describe ---------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """describe-victim's flags: one per victim.json key, numbers read as JSON (so that a wrong
    value gets the same message as in a file)."""
    parser.add_argument("--from", dest="template", help="a victim.json whose description the flags override "
                        "(its subset, init and epoch_losses, records of another victim, are not kept)")
    parser.add_argument("--images", help=IMAGES_HELP)
    parser.add_argument("--arch", help="architecture in the model registry (mlp, resnet18, resnet50)")
    parser.add_argument("--model-kwargs", type=_json, help='its settings as a JSON object, e.g. \'{"hidden": [32]}\'')
    parser.add_argument("--image-shape", nargs=3, type=_json, metavar=("C", "H", "W"),
                        help="input shape (read from --images when given)")
    parser.add_argument("--num-classes", type=_json, help="classes (default: the number of class names)")
    parser.add_argument("--num-outputs", type=_json, help="model outputs: num_classes, or 1 for a logistic model")
    parser.add_argument("--class-names", nargs="+", help="class names in label order (a folder's: sorted)")
    parser.add_argument("--mean", nargs="+", type=_json, help="normalisation x_norm = (x/255 - mean)/std, per channel")
    parser.add_argument("--std", nargs="+", type=_json, help="normalisation, per channel")
    parser.add_argument("--n-images", type=_json, help="training set size (read from --images when given)")
    for key in TRAINING:
        parser.add_argument(f"--{key.replace('_', '-')}", type=_json if key not in ("loss", "optimizer", "model_mode")
                            else str, help=f"training.{key}")


def _json(text: str) -> Any:
    """A flag's value as JSON where it parses (20, 0.01, true, [32]); else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def flags(args: argparse.Namespace) -> dict[str, Any]:
    """The victim.json keys the flags set."""
    given = {key: getattr(args, key) for key in DESCRIPTION if key != "training"}
    training = {key: getattr(args, key) for key in TRAINING}
    out = {key: value for key, value in given.items() if value is not None}
    out["training"] = {key: value for key, value in training.items() if value is not None}
    return out


def describe_victim(victim_dir: str | Path, overrides: dict[str, Any], template: str | Path | None = None,
                    images: str | Path | None = None) -> dict:
    """Write `victim.json` (and `truth.npz` from `images`) for the checkpoints in `victim_dir`."""
    victim_dir = Path(victim_dir)
    target = victim_dir / "victim.json"
    raw = _template(Path(template)) if template else {}
    truth = read_images(Path(images), overrides.get("class_names")) if images else None
    if truth is not None:
        raw.update(_measured(truth, overrides, Path(images)))
    raw.update({k: v for k, v in overrides.items() if k != "training"})
    base = raw.get("training", {})  # a template's non-object stays, to be reported
    raw["training"] = {**base, **overrides["training"]} if isinstance(base, dict) else base
    if isinstance(raw.get("class_names"), list) and "num_classes" not in raw:
        raw["num_classes"] = len(raw["class_names"])
    meta = _checked(raw, target, template)
    p0, pf = (victim_dir / name for name in THETAS)
    s0, sf = load_weights(p0), load_weights(pf)
    check_pair(s0, sf, p0, pf)
    load_into(build_from_meta(meta), s0, p0)
    if truth is not None:
        save_dataset(victim_dir / "truth.npz", _dataset(truth, meta, Path(images)))
    write_json(target, meta)  # last: its presence marks a complete bundle
    return meta


def _template(path: Path) -> dict[str, Any]:
    """The template's description, checked only once merged with the flags (which may fix it)."""
    raw = load_json(path)
    if not isinstance(raw, dict):
        raise SimudyError(f"{path}: must be a JSON object of victim settings")
    return {key: raw[key] for key in DESCRIPTION if key in raw}


def _measured(truth: Truth, overrides: dict[str, Any], images: Path) -> dict[str, Any]:
    """What the images say about the victim; flags may repeat it, not contradict it."""
    n, h, w, c = truth.images.shape
    measured = {"image_shape": [c, h, w], "n_images": n}
    for key, value in measured.items():
        if key in overrides and overrides[key] != value:
            raise SimudyError(f"{images}: the images give {key} {value}, the flag --{key.replace('_', '-')} "
                              f"{overrides[key]}")
    if truth.class_names is not None:
        measured["class_names"] = truth.class_names
    return measured


def _checked(raw: dict[str, Any], target: Path, template: str | Path | None) -> dict[str, Any]:
    source = f"{target} (from {template} and the flags)" if template else f"{target} (from the flags)"
    try:
        meta = check_meta(raw, source)
    except MetaError as err:  # name the flag that sets each key
        raise MetaError(source, [(_with_flag(key), text) for key, text in err.problems]) from None
    warn_about_recipe(meta.training, target)
    return meta.dump()


def _with_flag(key: str) -> str:
    """A victim.json key with the flag that sets it, if one does: `training.lr (--lr)`."""
    name = "model_kwargs" if key.startswith("model_kwargs") else key.removeprefix("training.")
    flagged = name in DESCRIPTION + TRAINING and name != "training"
    return f"{key} (--{name.replace('_', '-')})" if flagged else key


# -- images -----------------------------------------------------------------------------------


def read_images(path: Path, class_names: list[str] | None = None) -> Truth:
    if path.is_dir():
        return _read_folder(path, class_names)
    if path.suffix == ".npz":
        return _read_arrays(path)
    raise SimudyError(f"{path}: expected an .npz of images and labels, or a folder of <class>/<image> "
                      f"({'not found' if not path.exists() else 'neither'})")


def _read_arrays(path: Path) -> Truth:
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise SimudyError(f"{path}: file not found") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise SimudyError(f"{path}: not an .npz of arrays ({err})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise SimudyError(f"{path}: holds one array; expected an .npz with `images` and `labels`")
    with archive:
        missing = sorted({"images", "labels"} - set(archive.files))
        if missing:
            raise SimudyError(f"{path}: lacks {missing} (has {sorted(archive.files)})")
        try:
            images, labels = archive["images"], archive["labels"]
            names = archive["class_names"] if "class_names" in archive.files else None
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
            raise SimudyError(f"{path}: unreadable array ({err})") from None
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or 0 in images.shape:
        raise SimudyError(f"{path}: images must be uint8 [N, H, W, C] or [N, H, W] with pixels 0-255, "
                          f"got {images.dtype} {list(images.shape)}")
    images = images[..., None] if images.ndim == 3 else images
    if names is not None and (names.dtype.kind != "U" or names.ndim != 1):
        raise SimudyError(f"{path}: class_names must be a list of strings, got {names.dtype} {list(names.shape)}")
    ids = np.arange(len(images)).astype(str)
    return Truth(images, _labels(labels, len(images), path), None if names is None else names.tolist(), ids, "arrays")


def _labels(labels: np.ndarray, n: int, path: Path) -> np.ndarray:
    if labels.dtype.kind not in "iu" or labels.shape != (n,):
        raise SimudyError(f"{path}: labels must be integers [N] for the {n} images, got {labels.dtype} "
                          f"{list(labels.shape)}")
    if n and labels.min() < 0:
        raise SimudyError(f"{path}: negative label {int(labels.min())}")
    return labels.astype(np.int64)


def _read_folder(path: Path, class_names: list[str] | None) -> Truth:
    """<class>/<image> files, ordered by file name across classes (numbers compared by value)."""
    loose = [f.name for f in path.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
    if loose:
        raise SimudyError(f"{path}: images {sorted(loose)[:3]} lie outside class folders; expected <class>/<image>")
    folders = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    names = class_names or folders
    strays = sorted(set(folders) - set(names))
    if strays:
        raise SimudyError(f"{path}: folders {strays} are not among the class names {names}")
    files = [f for d in folders for f in (path / d).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise SimudyError(f"{path}: no images in <class>/ folders")
    seen: dict[str, Path] = {}
    for f in files:
        if f.name in seen:
            raise SimudyError(f"{path}: {seen[f.name].relative_to(path)} and {f.relative_to(path)} share a file name, "
                              "so their training order is unknown; name files by their position in training")
        seen[f.name] = f
    files.sort(key=lambda f: (_natural(f.name), f.name))
    labels = np.array([names.index(f.parent.name) for f in files], np.int64)
    ids = np.array([f.relative_to(path).as_posix() for f in files])
    return Truth(_decode_all(files, path), labels, list(names), ids, "imagefolder")


def _natural(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _decode_all(files: list[Path], root: Path) -> np.ndarray:
    decoded = [_decode(f) for f in files]
    grey = all(mode in GREY_MODES for _, mode in decoded)
    arrays = [np.asarray(im.convert("L" if grey else "RGB")) for im, _ in decoded]
    sizes = {a.shape for a in arrays}
    if len(sizes) != 1:
        raise SimudyError(f"{root}: images differ in size {sorted(sizes)[:3]}; resize them to the training size")
    stacked = np.stack(arrays)
    return stacked[..., None] if grey else stacked


def _decode(file: Path):
    from PIL import Image

    try:
        with Image.open(file) as im:
            im.load()
            return im.copy(), im.mode
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise SimudyError(f"{file}: cannot decode the image ({err})") from None


def _dataset(truth: Truth, meta: dict[str, Any], images: Path) -> Dataset:
    classes = meta["num_classes"]
    if truth.labels.max() >= classes:
        raise SimudyError(f"{images}: label {int(truth.labels.max())} for {classes} classes (num_classes)")
    names = meta.get("class_names") or [str(c) for c in range(classes)]
    return Dataset(images=truth.images, labels=truth.labels, split=np.full(len(truth.labels), "train"),
                   class_names=names, source_ids=truth.source_ids, mean=np.array(meta["mean"], np.float32),
                   std=np.array(meta["std"], np.float32),
                   meta={"schema": SCHEMA_VERSION, "dataset": "own", "source": truth.source, "origin": str(images)})
