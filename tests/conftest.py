from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import settings

from simudy import cli

ROOT = Path(__file__).resolve().parents[1]
# Property tests draw 2000 examples each. CI replays a fixed sequence of them, so that a verdict is
# the code's and not the draw's; `make test` draws fresh ones each run (HYPOTHESIS_PROFILE=ci replays
# CI's); `make test-fast` draws 100, for the edit-run loop.
settings.register_profile("full", max_examples=2000, deadline=None)
settings.register_profile("ci", settings.get_profile("full"), derandomize=True, database=None, print_blob=True)
settings.register_profile("fast", settings.get_profile("full"), max_examples=100)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "full"))

PIPELINE_FILES = ["Snakefile", "workflow", "params", "profiles", "dvc.yaml", "environment.yml", "bench", "src"]


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


def run_cli(*args: str) -> int:
    return cli.main([str(a) for a in args])


@pytest.fixture(scope="session")
def digits_file(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "digits.npz"
    assert run_cli("fetch-data", "--registry", ROOT / "params/experiments.yaml", "--dataset", "digits",
                   "--out", out) == 0
    return out


@pytest.fixture(scope="session")
def demo_victim(tmp_path_factory, digits_file) -> Path:
    """A digits victim built through the CLI at the smoke profile (seconds)."""
    root = tmp_path_factory.mktemp("victim")
    reg = ROOT / "params/experiments.yaml"
    common = ["--registry", reg, "--experiment", "demo", "--profile", "smoke"]
    assert run_cli("pretrain", *common, "--data", digits_file, "--out-dir", root / "init") == 0
    assert run_cli("finetune-victim", *common, "--data", digits_file, "--init-dir", root / "init",
                   "--out-dir", root / "victim") == 0
    return root / "victim"


@pytest.fixture
def victim(tmp_path, demo_victim) -> Path:
    """A copy of the demo victim that a test may damage."""
    dst = tmp_path / "victim"
    shutil.copytree(demo_victim, dst)
    return dst


def reconstruct_demo(victim: Path, tmp_path: Path, *extra: str) -> tuple[int, Path]:
    """`simudy reconstruct` on `victim` at the demo's smoke settings: (exit status, output folder)."""
    out = tmp_path / "out"
    code = run_cli("reconstruct", "--registry", ROOT / "params/experiments.yaml", "--experiment", "demo",
                   "--profile", "smoke", "--method", "simudy", "--victim-dir", victim, "--out-dir", out,
                   "--work-dir", tmp_path / "work", *extra)
    return code, out


def copy_pipeline(dst: Path) -> Path:
    """A copy of the pipeline definition and of the package's source (the rules run it, and
    take its files as inputs) to run Snakemake or DVC in."""
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in PIPELINE_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=skip, dirs_exist_ok=True)
        else:
            shutil.copy(src, dst / name)
    return dst


def tool(name: str) -> str:
    """A console script from the environment running the tests."""
    return str(Path(sys.executable).parent / name)


def run_tool(cwd: Path, *args: str, check: bool = True, env=None) -> subprocess.CompletedProcess:
    proc = subprocess.run([tool(args[0]), *args[1:]], cwd=cwd, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc
