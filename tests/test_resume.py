"""A killed reconstruction resumes from its last snapshot and ends exactly where an
uninterrupted run with the same seed ends."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from simudy.attacks import SimuDy, ThreatModel
from simudy.config import ThreatConfig, load_experiment
from simudy.runstate import STATE_FILE
from simudy.victim import load_victim
from tests.conftest import ROOT

GRANTS = ThreatConfig(theta0=True, hyperparams=True, dataset_size=True)


def _cfg(**update):
    base = load_experiment("demo", "smoke", ROOT / "params/experiments.yaml").reconstruct.attacks["simudy"]
    return base.model_copy(update={"steps": 12, "snapshot_every": 5, **update})


def _run(victim_dir, workdir, cfg, die_at=None):
    attack = SimuDy(cfg)
    if die_at is not None:
        calls, real = [0], attack.objective

        def dying(*args):
            calls[0] += 1
            if calls[0] == die_at:
                raise KeyboardInterrupt
            return real(*args)

        attack.objective = dying
    victim = load_victim(victim_dir)
    return attack.run(victim, ThreatModel.from_victim(victim, GRANTS), workdir)


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_identical_result(tmp_path, demo_victim):
    cfg = _cfg()
    full = _run(demo_victim, tmp_path / "a", cfg)
    with pytest.raises(KeyboardInterrupt):
        _run(demo_victim, tmp_path / "b", cfg, die_at=8)
    assert (tmp_path / "b" / STATE_FILE).exists()
    resumed = _run(demo_victim, tmp_path / "b", cfg)
    assert torch.equal(resumed.images, full.images)
    assert [r["loss"] for r in resumed.info["loss_rows"]] == [r["loss"] for r in full.info["loss_rows"]]
    assert [int(r["step"]) for r in resumed.info["loss_rows"]] == list(range(1, 13))
    # The finished run keeps its resume state until its outputs are written (run_attack drops it).
    assert (tmp_path / "b" / STATE_FILE).exists()


@pytest.mark.slow
def test_a_snapshot_of_another_configuration_is_not_resumed(tmp_path, demo_victim):
    with pytest.raises(KeyboardInterrupt):
        _run(demo_victim, tmp_path / "w", _cfg(), die_at=8)
    other = _run(demo_victim, tmp_path / "w", _cfg(tv_weight=0.01))
    fresh = _run(demo_victim, tmp_path / "fresh", _cfg(tv_weight=0.01))
    assert torch.equal(other.images, fresh.images)
    assert [int(r["step"]) for r in other.info["loss_rows"]] == list(range(1, 13))


def _registry_with_steps(tmp_path, steps):
    text = (ROOT / "params/experiments.yaml").read_text().replace(
        "reconstruct: {attacks: {simudy: {steps: 20, snapshot_every: 10, log_every: 10}}}",
        f"reconstruct: {{attacks: {{simudy: {{steps: {steps}, snapshot_every: 25, log_every: 25}}}}}}")
    assert text != (ROOT / "params/experiments.yaml").read_text()
    path = tmp_path / "experiments.yaml"
    path.write_text(text)
    return path


def _cli(registry, victim, out, work):
    return [sys.executable, "-m", "simudy", "reconstruct", "--registry", str(registry), "--experiment", "demo",
            "--profile", "smoke", "--method", "simudy",
            "--victim-dir", str(victim), "--out-dir", str(out), "--work-dir", str(work)]


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun(tmp_path, demo_victim):
    registry = _registry_with_steps(tmp_path, 300)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_cli(registry, demo_victim, tmp_path / "ref", tmp_path / "ref-work"), check=True, env=env,
                   capture_output=True)
    proc = subprocess.Popen(_cli(registry, demo_victim, tmp_path / "out", tmp_path / "work"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "work" / STATE_FILE
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert state.exists() and not (tmp_path / "out" / "reconstruction.safetensors").exists()
    subprocess.run(_cli(registry, demo_victim, tmp_path / "out", tmp_path / "work"), check=True, env=env,
                   capture_output=True)
    a = load_file(str(tmp_path / "ref" / "reconstruction.safetensors"))
    b = load_file(str(tmp_path / "out" / "reconstruction.safetensors"))
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["labels"], b["labels"])
