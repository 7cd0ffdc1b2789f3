"""SVHN (cropped digits, 32x32): the official MATLAB files, read with scipy.

`train_32x32.mat` and `test_32x32.mat` each hold `X`, uint8 [32, 32, 3, N], and `y`, [N, 1] with
the digit's label 1..10, 10 standing for the digit 0. Dataset order is the files' order, the id is
the index within the split, and the classes are the digits "0".."9" (label = y mod 10).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from simudy.errors import SimudyError

BASE_URL = "http://ufldl.stanford.edu/housenumbers/"
FILES = {"train": ("train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"),
         "test": ("test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3")}
CLASS_NAMES = [str(d) for d in range(10)]


def missing_message(name: str) -> str:
    """What to download and where to put it, for a machine that cannot download."""
    files = " and ".join(BASE_URL + f for f, _ in FILES.values())
    return (f"dataset {name!r} (SVHN) is not here: download {files} into one folder and set "
            f"SIMUDY_DATA_{name.upper()} (or datasets.{name}.path) to that folder")


def read_split(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 32, 32, 3] and labels int64 [N] (0..9) of one official file."""
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        mat = loadmat(path, variable_names=["X", "y"])
    except (MatReadError, OSError, ValueError, NotImplementedError) as err:  # damaged, or MATLAB v7.3
        raise SimudyError(f"{path}: not a readable SVHN {split} file ({err})") from None
    if "X" not in mat or "y" not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise SimudyError(f"{path}: an SVHN file holds X and y; found {found}")
    x, y = mat["X"], np.asarray(mat["y"]).reshape(-1)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[2] != 3 or x.shape[3] != len(y):
        raise SimudyError(f"{path}: X is {x.dtype} {list(x.shape)}, expected uint8 [H, W, 3, N] with N = "
                          f"{len(y)} labels")
    if not np.isin(y, np.arange(1, 11)).all():
        raise SimudyError(f"{path}: labels outside 1..10 (e.g. {y[~np.isin(y, np.arange(1, 11))][0]})")
    return np.ascontiguousarray(x.transpose(3, 0, 1, 2)), (y % 10).astype(np.int64)
