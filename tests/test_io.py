"""Atomic writes keep their temporaries out of output folders, and a killed writer's are swept."""

import os
import subprocess
import sys

import pytest

from simudy import io
from simudy.errors import SimudyError


@pytest.fixture
def tmp_root(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMUDY_TMP", str(tmp_path / "tmp"))
    return tmp_path / "tmp"


def test_a_write_in_progress_lives_outside_the_output_folder(tmp_path, tmp_root):
    out = tmp_path / "report" / "table.md"
    with io.atomic_path(out) as tmp:
        tmp.write_text("half")
        assert tmp.parent == tmp_root / str(os.getpid())
        assert list(out.parent.iterdir()) == []
    assert out.read_text() == "half"


def test_a_failed_write_leaves_nothing(tmp_path, tmp_root):
    out = tmp_path / "out.json"
    with pytest.raises(ValueError), io.atomic_path(out) as tmp:
        tmp.write_text("{")
        raise ValueError("the writer failed")
    assert not out.exists() and list((tmp_root / str(os.getpid())).iterdir()) == []


def test_the_next_command_sweeps_what_dead_writers_left(tmp_root):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = tmp_root / dead.stdout.strip()
    left.mkdir(parents=True)
    (left / ".metrics.json.abc.tmp.json").write_text("{")
    mine = tmp_root / str(os.getpid())
    mine.mkdir()
    io.clean_stale_temporaries()
    assert not left.exists() and mine.exists()


def test_an_unwritable_output_folder_is_named(tmp_path, tmp_root):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SimudyError, match=f"{blocker / 'out.json'}: cannot write"):
        io.write_json(blocker / "out.json", {})
