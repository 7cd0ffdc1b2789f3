"""`make gpu` (`simudy gpu`): the paper-scale plan's plumbing, at the smoke profile on CPU."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simudy.gpu import plan
from tests.conftest import copy_pipeline, run_tool, tool

pytestmark = pytest.mark.slow

TINY_BENCH = """
modes: {reference: {reference: true}, default: {}}
cases:
  fig1_n2: {kind: cost, experiment: fig1, profile: smoke, n_images: 2, image_shape: [3, 32, 32],
            num_classes: 10, steps: 1}
runs: {fig1_n2: [reference, default]}
"""


def _tiny_cifar(root: Path) -> Path:
    """A CIFAR-10-shaped image folder: 2 training and 10 test images per class."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 2), ("test", 10)):
        for c in range(10):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")
    return root


def test_the_plan_is_simudy_first_then_the_baselines():
    steps = plan("paper")
    assert [s.name for s in steps] == ["fig1", "fig1_fast", "bench", "fig5", "fig1_all", "fig5_all"]
    assert [s.profile for s in steps] == ["paper", "paper_fast", None, "paper", "paper", "paper"]
    assert steps[0].targets == ["results/fig1/paper/evaluate/simudy/metrics.json"]
    assert steps[2].targets == ["results/bench/gpu/bench.md"]


def test_gpu_command_runs_every_step_records_failures_and_resumes(tmp_path):
    (tmp_path / "repo/bench").mkdir(parents=True)
    work = copy_pipeline(tmp_path / "repo")
    (work / "bench/gpu.yaml").write_text(TINY_BENCH)
    env = {**os.environ, "PATH": f"{Path(tool('snakemake')).parent}{os.pathsep}{os.environ['PATH']}",
           "SIMUDY_DATA_CIFAR10": str(_tiny_cifar(tmp_path / "cifar")), "OMP_NUM_THREADS": "1"}
    run_tool(work, "simudy", "gpu", "--profile", "smoke", "--cores", "2", env=env)

    summary = json.loads((work / "results/gpu/smoke/summary.json").read_text())
    steps = {s["step"]: s for s in summary["steps"]}
    assert list(steps) == ["fig1", "fig1_fast", "bench", "fig5", "fig1_all", "fig5_all"]
    assert all(s["status"] == "done" for s in steps.values())
    assert set(steps["fig1"]["methods"]) == {"simudy"}  # SimuDy before the baselines
    assert set(steps["fig1_all"]["methods"]) == {"simudy", "buzaglo_authors"}
    assert steps["fig1"]["methods"]["simudy"]["paper_ssim"] == 0.3140
    assert set(steps["fig1_fast"]["methods"]) == {"simudy"}
    assert not (work / "results/fig1/smoke_fast/victim").exists()  # it attacked the smoke victim
    assert "fig1_n2" in steps["bench"]["table"]
    assert "| fig1_fast | done |" in (work / "results/gpu/smoke/summary.md").read_text()

    # A second call finds everything built and reruns nothing; a step that fails is recorded
    # and the steps after it still run.
    (work / "bench/gpu.yaml").write_text("modes: {}\n")
    (work / "results/bench/gpu/bench.md").unlink()
    proc = run_tool(work, "simudy", "gpu", "--profile", "smoke", "--cores", "2", check=False, env=env)
    assert proc.returncode == 2 and "gpu steps failed: ['bench']" in proc.stderr
    steps = {s["step"]: s for s in json.loads((work / "results/gpu/smoke/summary.json").read_text())["steps"]}
    assert [s["status"] for s in steps.values()] == ["done", "done", "failed (exit 1)", "done", "done", "done"]
    assert (work / "results/gpu/smoke/logs/fig5.log").read_text().count("Nothing to be done") == 1
