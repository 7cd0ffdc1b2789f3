"""SVHN's reader: the official .mat files (written small here: there is no copy offline), their
checksums, and what a machine without the data is told."""

from __future__ import annotations

import hashlib
import urllib.request

import numpy as np
import pytest
from scipy.io import savemat

from simudy import svhn
from simudy.config import DatasetConfig
from simudy.data import fetch, load_dataset, source_record
from simudy.errors import SimudyError

CFG = DatasetConfig(source="svhn")


def _official_files(folder, monkeypatch, sizes=(6, 4)):
    """Miniatures of train_32x32.mat and test_32x32.mat, their md5s made the expected ones."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    files, data = {}, {}
    for (split, (name, _)), n in zip(svhn.FILES.items(), sizes):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n) % 10 + 1).reshape(-1, 1).astype(np.uint8)  # 1..10; 10 is the digit 0
        savemat(folder / name, {"X": x, "y": y})
        files[split] = (name, hashlib.md5((folder / name).read_bytes()).hexdigest())
        data[split] = (x, y)
    monkeypatch.setattr(svhn, "FILES", files)
    monkeypatch.setenv("SIMUDY_DATA_SVHN", str(folder))
    return data


def test_the_official_files_become_the_dataset_file(tmp_path, monkeypatch):
    data = _official_files(tmp_path / "svhn", monkeypatch, sizes=(12, 4))
    fetch("svhn", CFG, tmp_path / "svhn.npz")
    train, test = (load_dataset(tmp_path / "svhn.npz", split=s) for s in ("train", "test"))
    x, y = data["train"]
    assert train.images.shape == (12, 32, 32, 3) and len(test) == 4
    assert np.array_equal(train.images[5], x[:, :, :, 5])  # [H, W, C, N] -> [N, H, W, C]
    assert train.labels.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2]
    assert train.class_names == [str(d) for d in range(10)]
    assert train.source_ids[:3].tolist() == ["0", "1", "2"] and train.meta["source"] == "svhn"


def test_a_file_that_is_not_the_official_one_is_refused(tmp_path, monkeypatch):
    _official_files(tmp_path / "svhn", monkeypatch)
    with open(tmp_path / "svhn" / "test_32x32.mat", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(SimudyError, match=r"test_32x32.mat: md5 checksum mismatch"):
        fetch("svhn", CFG, tmp_path / "svhn.npz")
    assert not (tmp_path / "svhn.npz").exists()


def test_a_damaged_or_wrong_file_is_named(tmp_path, monkeypatch):
    _official_files(tmp_path / "svhn", monkeypatch)
    bad = tmp_path / "svhn" / "train_32x32.mat"
    bad.write_bytes(b"not a MATLAB file")
    with pytest.raises(SimudyError, match="train_32x32.mat: not a readable SVHN train file"):
        svhn.read_split(bad, "train")
    savemat(bad, {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[0], [3]])})
    with pytest.raises(SimudyError, match="train_32x32.mat: labels outside 1..10"):
        svhn.read_split(bad, "train")
    savemat(bad, {"X": np.zeros((32, 32, 3, 2), np.float32), "y": np.array([[1], [3]])})
    with pytest.raises(SimudyError, match=r"X is float32 \[32, 32, 3, 2\]"):
        svhn.read_split(bad, "train")


def test_offline_without_a_copy_says_what_to_download_and_where(tmp_path, monkeypatch):
    monkeypatch.delenv("SIMUDY_DATA_SVHN", raising=False)
    monkeypatch.setenv("SIMUDY_CACHE", str(tmp_path / "cache"))

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    record = source_record("svhn", CFG)  # what a dry run's data_source records: no download
    assert record["files"] == {svhn.BASE_URL + "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
                               svhn.BASE_URL + "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3"}
    with pytest.raises(SimudyError) as err:
        fetch("svhn", CFG, tmp_path / "svhn.npz")
    message = str(err.value)
    assert "could not download http://ufldl.stanford.edu/housenumbers/train_32x32.mat" in message
    assert "test_32x32.mat into one folder and set SIMUDY_DATA_SVHN" in message


def test_a_local_copy_must_be_the_folder_of_the_files(tmp_path, monkeypatch):
    data = _official_files(tmp_path / "svhn", monkeypatch)
    monkeypatch.setenv("SIMUDY_DATA_SVHN", str(tmp_path / "svhn" / "train_32x32.mat"))
    with pytest.raises(SimudyError, match="is read from a folder holding train_32x32.mat and test_32x32.mat"):
        fetch("svhn", CFG, tmp_path / "svhn.npz")
    (tmp_path / "svhn" / "test_32x32.mat").unlink()
    monkeypatch.setenv("SIMUDY_DATA_SVHN", str(tmp_path / "svhn"))
    with pytest.raises(SimudyError, match=r"test_32x32.mat: not found; dataset 'svhn' \(SVHN\) is not here"):
        fetch("svhn", CFG, tmp_path / "svhn.npz")
    assert set(data) == {"train", "test"}
