"""Tiny ImageNet: the official layout (train/<wnid>/images/, val/images/ + val_annotations.txt),
the image-folder layout with val/ as the test split (the shared 10-class copy), and classes
chosen by name in the authors' order."""

from __future__ import annotations

import io
import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from simudy.config import DatasetConfig, load_registry
from simudy.data import fetch, load_dataset
from simudy.errors import SimudyError
from tests.conftest import ROOT

SHARED = ROOT.parent / "shared" / "data" / "tiny-imagenet-10class.zip"


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _official_zip(path, wnids=("n02", "n01", "n03"), per_class=2, annotations=None):
    """A miniature of tiny-imagenet-200.zip: train images in <wnid>/images/, val images flat."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("tiny-imagenet-200/wnids.txt", "\n".join(wnids))
        for c, wnid in enumerate(wnids):
            z.writestr(f"tiny-imagenet-200/train/{wnid}/{wnid}_boxes.txt", "")
            for k in range(per_class):
                z.writestr(f"tiny-imagenet-200/train/{wnid}/images/{wnid}_{k}.JPEG", _png(10 * c + k))
        lines = [f"val_{c}.JPEG\t{wnid}\t0\t0\t63\t63" for c, wnid in enumerate(wnids)]
        for c, _ in enumerate(wnids):
            z.writestr(f"tiny-imagenet-200/val/images/val_{c}.JPEG", _png(200 + c))
        z.writestr("tiny-imagenet-200/val/val_annotations.txt", annotations or "\n".join(lines))
        z.writestr("tiny-imagenet-200/test/images/test_0.JPEG", _png(1))  # unlabelled: not read
    return path


def test_the_official_layout_reads_train_and_the_labelled_val_split(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMUDY_DATA_TINY", str(_official_zip(tmp_path / "tiny.zip")))
    fetch("tiny", DatasetConfig(source="tinyimagenet"), tmp_path / "tiny.npz")
    train, test = (load_dataset(tmp_path / "tiny.npz", split=s) for s in ("train", "test"))
    assert train.class_names == ["n01", "n02", "n03"] and train.images.shape == (6, 64, 64, 3)
    assert train.labels.tolist() == [0, 1, 2, 0, 1, 2]  # balanced prefixes, as every image folder
    assert test.labels.tolist() == [0, 1, 2] and int(test.images[0, 0, 0, 0]) == 201  # val_1 is n01's
    assert train.source_ids[0] == "tiny-imagenet-200/train/n01/images/n01_0.JPEG"


def test_classes_by_name_keep_the_authors_order(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMUDY_DATA_TINY", str(_official_zip(tmp_path / "tiny.zip")))
    fetch("tiny", DatasetConfig(source="tinyimagenet", classes=["n03", "n01"]), tmp_path / "tiny.npz")
    train = load_dataset(tmp_path / "tiny.npz", split="train")
    assert train.class_names == ["n03", "n01"] and train.labels.tolist() == [1, 0, 1, 0]
    with pytest.raises(SimudyError, match=r"classes \['n09'\] are not among its 3 classes"):
        fetch("tiny", DatasetConfig(source="tinyimagenet", classes=["n01", "n09"]), tmp_path / "other.npz")


@pytest.mark.parametrize("annotations, message", [
    ("val_0.JPEG\tn99\t0", r"val_annotations.txt: line 1: expected <file> TAB <wnid of a train class>"),
    ("val_7.JPEG\tn01\t0", r"line 1: 'tiny-imagenet-200/val/images/val_7.JPEG' is not in the archive"),
])
def test_bad_validation_labels_are_named(tmp_path, monkeypatch, annotations, message):
    monkeypatch.setenv("SIMUDY_DATA_TINY", str(_official_zip(tmp_path / "tiny.zip", annotations=annotations)))
    with pytest.raises(SimudyError, match=message):
        fetch("tiny", DatasetConfig(source="tinyimagenet"), tmp_path / "tiny.npz")


@pytest.mark.skipif(not SHARED.exists(), reason="the shared 10-class copy is not beside the checkout")
def test_the_shared_ten_class_copy_reads_with_val_as_the_test_split(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMUDY_DATA_TINYIMAGENET", os.fspath(SHARED))
    cfg = load_registry(ROOT / "params/experiments.yaml").datasets["tinyimagenet"]
    ds = fetch("tinyimagenet", cfg, tmp_path / "tiny.npz")
    wnids = zipfile.ZipFile(SHARED).read("tiny-imagenet-10class/wnids.txt").decode().split()
    assert ds.class_names == wnids  # the authors' class indices 23, 45, 65, ... in their order
    assert ds.images.shape == (5500, 64, 64, 3) and (ds.split == "test").sum() == 500
    assert np.allclose(ds.mean, [0.4802, 0.4481, 0.3975])
