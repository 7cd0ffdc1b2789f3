import io
import shutil
import zipfile

import numpy as np
import pytest
from PIL import Image

from simudy.config import DatasetConfig
from simudy.data import fetch, load_dataset, select_subset
from simudy.errors import SimudyError


def test_subset_takes_the_first_images_of_each_class_in_dataset_order():
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 2])
    assert select_subset(labels, 2, 0, 3).tolist() == [0, 1, 2, 3, 4, 5]
    assert select_subset(labels, 1, 1, 3).tolist() == [3, 4, 5]
    assert select_subset(labels, 1, 2, 3).tolist() == [6, 7, 8]


def test_subset_errors():
    labels = np.array([0, 1, 0, 1])
    with pytest.raises(SimudyError, match="empty victim subset"):
        select_subset(labels, 0, 0, 2)
    with pytest.raises(SimudyError, match=r"class 0 has 2 images, fewer than offset 1 \+ per_class 2"):
        select_subset(labels, 2, 1, 2)


def test_digits_file_follows_the_schema(digits_file):
    ds = load_dataset(digits_file, split="train")
    assert ds.images.dtype == np.uint8 and ds.images.shape == (1500, 8, 8, 1)
    assert ds.labels.dtype == np.int64 and ds.class_names == [str(i) for i in range(10)]
    assert ds.source_ids[:3].tolist() == ["0", "1", "2"]
    assert ds.meta["schema"] == 1 and set(ds.split) == {"train"}
    x = ds.normalised()
    assert x.shape == (1500, 1, 8, 8)
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 1e-2
    test = load_dataset(digits_file, split="test")
    assert len(test) == 297 and set(test.source_ids).isdisjoint(ds.source_ids)
    assert len(load_dataset(digits_file)) == 1797


def _write_folder(root, classes=("cat", "dog", "emu"), per_class=3, skip_test=()):
    for split in ("train", "test"):
        for ci, c in enumerate(classes):
            if split == "test" and c in skip_test:
                continue
            d = root / split / c
            d.mkdir(parents=True)
            for k in range(per_class):
                Image.fromarray(np.full((4, 4, 3), 40 * ci + k, np.uint8)).save(d / f"{k:04d}.png")


def _zip(src, dst):
    with zipfile.ZipFile(dst, "w") as zf:
        for p in sorted(src.rglob("*.png")):
            zf.write(p, "nested/" + p.relative_to(src).as_posix())


def test_imagefolder_from_directory_and_zip(tmp_path):
    _write_folder(tmp_path / "folder")
    _zip(tmp_path / "folder", tmp_path / "folder.zip")
    for src in (tmp_path / "folder", tmp_path / "folder.zip"):
        fetch("toy", DatasetConfig(source="imagefolder", path=str(src)), tmp_path / f"out{src.suffix}.npz")
        ds = load_dataset(tmp_path / f"out{src.suffix}.npz", split="train")
        assert ds.class_names == ["cat", "dog", "emu"]
        # Rows interleave classes by rank, so that the first k of each class is a prefix.
        assert ds.labels.tolist() == [0, 1, 2] * 3
        assert ds.images[1, 0, 0, 0] == 40 and ds.images[3, 0, 0, 0] == 1
        assert ds.source_ids[0].endswith("train/cat/0000.png")


def test_imagefolder_with_a_missing_class_is_refused(tmp_path):
    _write_folder(tmp_path / "folder", skip_test=("dog",))
    with pytest.raises(SimudyError, match=r"folder: split 'test' has no images for class\(es\) \['dog'\]"):
        fetch("toy", DatasetConfig(source="imagefolder", path=str(tmp_path / "folder")), tmp_path / "out.npz")
    assert not (tmp_path / "out.npz").exists()


def test_bad_dataset_files(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_text("not numpy")
    with pytest.raises(SimudyError, match="bad.npz: not a simudy dataset file"):
        load_dataset(bad)
    np.savez(tmp_path / "partial.npz", images=np.zeros((1, 2, 2, 1), np.uint8))
    with pytest.raises(SimudyError, match="partial.npz: dataset file lacks"):
        load_dataset(tmp_path / "partial.npz")


def test_local_copy_replaces_the_download(tmp_path, monkeypatch):
    _write_folder(tmp_path / "folder")
    monkeypatch.setenv("SIMUDY_DATA_TOY", str(tmp_path / "folder"))
    cfg = DatasetConfig(source="cifar10", mean=[0.5] * 3, std=[0.25] * 3)
    fetch("toy", cfg, tmp_path / "out.npz")
    ds = load_dataset(tmp_path / "out.npz", split="test")
    assert len(ds) == 9 and ds.mean.tolist() == [0.5] * 3


def _cifar_tarball(path, payload=None):
    """A miniature of the official python tarball: pickled dicts of numpy arrays."""
    import io
    import pickle
    import tarfile

    def add(tar, name, obj):
        raw = pickle.dumps(obj)
        info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
        info.size = len(raw)
        tar.addfile(info, io.BytesIO(raw))

    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        add(tar, "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            labels = list(range(10)) * 2
            add(tar, name, payload or {b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), b"labels": labels})
    return path


def _md5(path):
    import hashlib

    return hashlib.md5(path.read_bytes()).hexdigest()


def test_official_cifar10_tarball_is_read_with_checksum(tmp_path, monkeypatch):
    tarball = _cifar_tarball(tmp_path / "cifar-10-python.tar.gz")
    monkeypatch.setenv("SIMUDY_DATA_CIFAR10", str(tarball))
    fetch("cifar10", DatasetConfig(source="cifar10", md5=_md5(tarball)), tmp_path / "c.npz")
    ds = load_dataset(tmp_path / "c.npz", split="train")
    assert ds.images.shape == (100, 32, 32, 3) and ds.class_names[0] == "c0"
    assert ds.source_ids[:2].tolist() == ["0", "1"] and len(load_dataset(tmp_path / "c.npz", split="test")) == 20
    with pytest.raises(SimudyError, match="md5 checksum mismatch"):
        fetch("cifar10", DatasetConfig(source="cifar10", md5="0" * 32), tmp_path / "d.npz")


def test_a_tampered_tarball_cannot_run_code(tmp_path, monkeypatch):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    tarball = _cifar_tarball(tmp_path / "evil.tar.gz", payload={b"data": Evil(), b"labels": [0]})
    monkeypatch.setenv("SIMUDY_DATA_CIFAR10", str(tarball))
    with pytest.raises(SimudyError, match="refusing to load builtins.print"):
        fetch("cifar10", DatasetConfig(source="cifar10", md5=_md5(tarball)), tmp_path / "e.npz")


GREY, RGB = {"mean": [0.5], "std": [0.25]}, {"mean": [0.5] * 3, "std": [0.25] * 3}  # for constant images


def _save(img: Image.Image, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def _fetch_folder(tmp_path, images: dict[str, Image.Image], **cfg):
    """Fetch an image folder holding `images` (path inside it -> image); the train split."""
    for rel, img in images.items():
        _save(img, tmp_path / "folder" / rel)
    fetch("toy", DatasetConfig(source="imagefolder", path=str(tmp_path / "folder"), **cfg), tmp_path / "out.npz")
    return load_dataset(tmp_path / "out.npz", split="train")


def _each_split(make) -> dict[str, Image.Image]:
    return {f"r/{s}/{c}/0.png": make(ci) for s in ("train", "test") for ci, c in enumerate(("a", "b"))}


@pytest.mark.parametrize("mode", ["L", "1", "LA"])
def test_greyscale_images_keep_one_channel(tmp_path, mode):
    ds = _fetch_folder(tmp_path, _each_split(lambda ci: Image.new(mode, (3, 2), (255,) * len(mode))), **GREY)
    assert ds.images.shape == (2, 2, 3, 1) and ds.image_shape == (1, 2, 3) and ds.mean.shape == (1,)
    assert (ds.images == 255).all()


def test_sixteen_bit_greyscale_is_scaled_to_eight_bits(tmp_path):
    wide = np.array([[0, 257, 32896, 65535]], np.uint16)  # 8-bit 0, 1, 128, 255 widened (x 257)
    ds = _fetch_folder(tmp_path, _each_split(lambda ci: Image.fromarray(wide)))
    assert ds.images.shape == (2, 1, 4, 1) and ds.images[0, 0, :, 0].tolist() == [0, 1, 128, 255]


def test_colour_and_palette_images_give_three_channels(tmp_path):
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    images = _each_split(lambda ci: Image.fromarray(rgb) if ci else Image.new("L", (3, 2), 77))
    images["r/test/a/1.png"] = Image.new("P", (3, 2), 5)
    ds = _fetch_folder(tmp_path, images)
    assert ds.images.shape == (2, 2, 3, 3)
    assert (ds.images[0] == 77).all() and (ds.images[1] == rgb).all()  # grey repeated in R, G and B


def test_channels_can_be_forced(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (2, 3, 3), dtype=np.uint8)
    ds = _fetch_folder(tmp_path, _each_split(lambda ci: Image.fromarray(rgb)), channels=1, **GREY)
    assert ds.images.shape == (2, 2, 3, 1)
    assert (ds.images[0, ..., 0] == np.asarray(Image.fromarray(rgb).convert("L"))).all()
    grey = _fetch_folder(tmp_path / "grey", _each_split(lambda ci: Image.new("L", (3, 2), 9)), channels=3, **RGB)
    assert grey.images.shape == (2, 2, 3, 3) and (grey.images == 9).all()


def test_other_files_hidden_files_and_folder_entries_are_ignored(tmp_path):
    members = {f"d/{s}/{c}/{k}.png": c for s in ("train", "test") for c in ("cat", "dog") for k in range(2)}
    with zipfile.ZipFile(tmp_path / "d.zip", "w") as zf:
        for folder in ("d/", "d/train/", "d/train/cat/", "d/test/dog/"):
            zf.writestr(zipfile.ZipInfo(folder), b"")
        for rel, c in members.items():
            img = Image.new("RGB", (2, 2), (40 if c == "cat" else 90, int(rel[-5]), 0))
            buf = io.BytesIO()
            img.save(buf, "PNG")
            zf.writestr(rel, buf.getvalue())
        zf.writestr("d/README.txt", "about")
        zf.writestr("d/train/cat/notes.txt", "not an image")
        zf.writestr("__MACOSX/d/train/cat/._0.png", "resource fork")
        zf.writestr("d/train/.hidden/0.png", "junk")
        zf.writestr("d/test/dog/.DS_Store", "junk")
    fetch("toy", DatasetConfig(source="imagefolder", path=str(tmp_path / "d.zip"), **RGB), tmp_path / "out.npz")
    ds = load_dataset(tmp_path / "out.npz")
    assert ds.class_names == ["cat", "dog"] and len(ds) == 8
    assert sorted(ds.source_ids[ds.split == "train"]) == sorted(k for k in members if "/train/" in k)


def test_linked_class_folders_are_followed(tmp_path):
    _write_folder(tmp_path / "real")
    (tmp_path / "linked" / "train").mkdir(parents=True)
    (tmp_path / "linked" / "test").symlink_to(tmp_path / "real" / "test")
    for c in ("cat", "dog", "emu"):
        (tmp_path / "linked" / "train" / c).symlink_to(tmp_path / "real" / "train" / c)
    (tmp_path / "real" / "train" / "cat" / "loop").symlink_to(tmp_path / "linked")  # must not loop
    fetch("toy", DatasetConfig(source="imagefolder", path=str(tmp_path / "linked")), tmp_path / "out.npz")
    assert len(load_dataset(tmp_path / "out.npz")) == 18


def test_the_registry_path_of_a_cifar10_dataset_is_its_local_copy(tmp_path, monkeypatch):
    monkeypatch.delenv("SIMUDY_DATA_CIFAR10", raising=False)
    tarball = _cifar_tarball(tmp_path / "cifar-10-python.tar.gz")
    fetch("cifar10", DatasetConfig(source="cifar10", path=str(tarball), md5=_md5(tarball)), tmp_path / "c.npz")
    assert load_dataset(tmp_path / "c.npz").meta["origin"] == str(tarball)


def test_source_record_describes_the_copy_fetch_would_read(tmp_path, monkeypatch):
    import sklearn

    from simudy.data import source_record

    monkeypatch.delenv("SIMUDY_DATA_TOY", raising=False)
    assert source_record("toy", DatasetConfig(source="digits")) == {"source": "digits",
                                                                    "scikit-learn": sklearn.__version__}
    cfg = DatasetConfig(source="cifar10", url="https://example.org/c.tgz", md5="0" * 32)
    assert source_record("toy", cfg) == {"source": "cifar10", "url": "https://example.org/c.tgz", "md5": "0" * 32}

    _write_folder(tmp_path / "folder")
    _zip(tmp_path / "folder", tmp_path / "folder.zip")
    monkeypatch.setenv("SIMUDY_DATA_TOY", str(tmp_path / "folder.zip"))
    zipped = tmp_path / "folder.zip"
    record = {"source": "cifar10", "size": zipped.stat().st_size, "md5": _md5(zipped)}
    assert source_record("toy", cfg) == record
    shutil.copy(tmp_path / "folder.zip", tmp_path / "copy.zip")  # the same data elsewhere: the same record
    monkeypatch.setenv("SIMUDY_DATA_TOY", str(tmp_path / "copy.zip"))
    assert source_record("toy", cfg) == record

    monkeypatch.setenv("SIMUDY_DATA_TOY", str(tmp_path / "folder"))
    before = source_record("toy", cfg)
    assert before["files"] == 18
    Image.new("RGB", (4, 4)).save(tmp_path / "folder" / "train" / "cat" / "9999.png")
    after = source_record("toy", cfg)
    assert after["files"] == 19 and after["listing_sha256"] != before["listing_sha256"]

    with pytest.raises(SimudyError, match="SIMUDY_DATA_TOY is set, but dataset 'toy' is scikit-learn's bundled"):
        source_record("toy", DatasetConfig(source="digits"))
    monkeypatch.delenv("SIMUDY_DATA_TOY")
    # No copy: the record says so (every other target's DAG still builds) and fetch-data stops.
    assert source_record("toy", DatasetConfig(source="imagefolder")) == {"source": "imagefolder", "path": None}
    with pytest.raises(SimudyError, match=r"imagefolder source needs a path \(or SIMUDY_DATA_TOY\)"):
        fetch("toy", DatasetConfig(source="imagefolder"), tmp_path / "toy.npz")
