"""Atomic writes: a stage's outputs appear whole or not at all.

A file is written under a temporary name and moved into place when complete. The temporary
files live in `.simudy-tmp/<pid>/` under the working directory (SIMUDY_TMP to move it), not
beside the output: a DVC directory output, or a Snakemake report directory, would otherwise take
in what a killed run left behind. The next simudy command removes what dead processes left.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from simudy.errors import SimudyError


def temp_root() -> Path:
    return Path(os.environ.get("SIMUDY_TMP", ".simudy-tmp")).absolute()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path; move it to `path` only if the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=_temp_dir_for(path), prefix=f".{path.name}.", suffix=".tmp" + path.suffix)
        os.close(fd)
    except OSError as err:
        raise SimudyError(f"{path}: cannot write ({_reason(err)})") from None
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as err:
        raise SimudyError(f"{path}: cannot write ({_reason(err)}); nothing was written there") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _temp_dir_for(path: Path) -> Path:
    """This process's temporary folder, where a rename reaches `path`; else beside it."""
    own = temp_root() / str(os.getpid())
    try:
        own.mkdir(parents=True, exist_ok=True)
        if own.stat().st_dev == path.parent.stat().st_dev:
            return own
    except OSError:
        pass
    return path.parent


def clean_stale_temporaries() -> None:
    """Remove the temporary folders of processes that no longer run (a killed stage's)."""
    root = temp_root()
    if not root.is_dir():
        return
    for entry in root.iterdir():
        if entry.name.isdigit() and not _alive(int(entry.name)):
            shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _reason(err: OSError) -> str:
    return err.strerror or str(err)


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SimudyError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise SimudyError(f"{path}: is a directory, expected a JSON file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SimudyError(f"{path}: not valid JSON ({err})") from None


def save_figure(fig, path: str | Path) -> None:
    """A matplotlib figure written atomically (in the format its suffix names), then closed."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=150, format=Path(path).suffix.lstrip("."))
    plt.close(fig)
