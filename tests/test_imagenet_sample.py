"""One ImageNet image per class (the ViT's data, App. C.6): a flat folder of <wnid>_<name>.JPEG
of any size, resized and centre-cropped, classes in wnid order."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from simudy.config import DatasetConfig
from simudy.data import fetch, load_dataset, source_record
from simudy.errors import SimudyError
from tests.conftest import ROOT

SHARED = ROOT.parent / "shared" / "data" / "imagenet-sample-100.zip"


def _zip(path, files: dict[str, tuple[int, int, int]]):
    """name -> (width, height, grey level): a flat folder of solid images with a bright centre."""
    with zipfile.ZipFile(path, "w") as z:
        for name, (w, h, value) in files.items():
            pixels = np.full((h, w, 3), value, np.uint8)
            pixels[h // 2 - 2:h // 2 + 2, w // 2 - 2:w // 2 + 2] = 255
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="PNG")
            z.writestr(name, buf.getvalue())
    return path


def test_each_class_is_one_image_resized_and_centre_cropped(tmp_path, monkeypatch):
    files = {"sample/n02000000_b.JPEG": (40, 20, 50), "sample/n01000000_a_long_name.JPEG": (16, 48, 100)}
    monkeypatch.setenv("SIMUDY_DATA_INS", str(_zip(tmp_path / "s.zip", files)))
    fetch("ins", DatasetConfig(source="imagenet_sample", image_size=8), tmp_path / "ins.npz")
    train = load_dataset(tmp_path / "ins.npz", split="train")
    assert train.class_names == ["n01000000", "n02000000"] and train.labels.tolist() == [0, 1]
    assert train.images.shape == (2, 8, 8, 3)
    assert train.images[0, 0, 0, 0] == 100 and train.images[1, 0, 0, 0] == 50
    assert (train.images[:, 4, 4, 0] > train.images[:, 0, 0, 0] + 80).all()  # the centre stays in the middle
    assert train.source_ids.tolist() == ["sample/n01000000_a_long_name.JPEG", "sample/n02000000_b.JPEG"]
    with pytest.raises(SimudyError, match="no images in split 'test'"):  # it has none: one image per class
        load_dataset(tmp_path / "ins.npz", split="test")


@pytest.mark.parametrize("files, cfg, message", [
    ({"s/tench.JPEG": (8, 8, 0)}, {"image_size": 8}, "'s/tench.JPEG': expected <wnid>_<name>.<ext>"),
    ({"s/n01000000_a.JPEG": (8, 8, 0), "s/n01000000_b.JPEG": (8, 8, 0)}, {"image_size": 8},
     "two images of class n01000000"),
    ({"a/n01000000_a.JPEG": (8, 8, 0), "b/n02000000_b.JPEG": (8, 8, 0)}, {"image_size": 8},
     "images in 2 folders; expected one flat folder"),
    ({"s/n01000000_a.JPEG": (8, 8, 0)}, {}, "needs image_size"),
])
def test_bad_samples_are_refused_naming_the_file(tmp_path, monkeypatch, files, cfg, message):
    monkeypatch.setenv("SIMUDY_DATA_INS", str(_zip(tmp_path / "s.zip", files)))
    with pytest.raises(SimudyError, match=message):
        fetch("ins", DatasetConfig(source="imagenet_sample", **cfg), tmp_path / "ins.npz")


@pytest.mark.skipif(not SHARED.exists(), reason="the shared ImageNet sample is not beside the checkout")
def test_the_shared_sample_has_one_image_for_each_of_the_first_100_classes(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMUDY_DATA_INS", str(SHARED))
    ds = fetch("ins", DatasetConfig(source="imagenet_sample", image_size=32), tmp_path / "ins.npz")
    assert ds.images.shape == (100, 32, 32, 3) and ds.class_names[:2] == ["n01440764", "n01443537"]
    assert (ds.split == "train").all()


def test_without_a_copy_the_record_says_so_and_fetch_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("SIMUDY_DATA_INS", raising=False)
    cfg = DatasetConfig(source="imagenet_sample", image_size=8)
    assert source_record("ins", cfg) == {"source": "imagenet_sample", "path": None}  # the DAG still builds
    with pytest.raises(SimudyError, match=r"imagenet_sample source needs a path \(or SIMUDY_DATA_INS\)"):
        fetch("ins", cfg, tmp_path / "ins.npz")
