"""Time-to-SSIM ablations: which settings each run gets, the time budget, the curves read from
snapshots, and the table's timings."""

import logging

import numpy as np
import pandas as pd
import pytest
import yaml

from simudy import ablation
from simudy.attacks import SimuDy, ThreatModel
from simudy.config import ThreatConfig, load_experiment, load_registry, read_yaml
from simudy.data import load_dataset
from simudy.errors import SimudyError
from simudy.pairing import progress_monitor
from simudy.reconstruct import run_attack
from simudy.victim import load_victim
from tests.conftest import ROOT, run_cli

DEMO_ABLATION = {"title": "demo speed-ups", "experiment": "demo", "profile": "smoke", "baseline_profile": "paper",
                 "method": "simudy", "minutes": 10.0, "snapshot_every": 2, "thresholds": [0.05, 0.99],
                 "at_minutes": [0.001, 10.0],
                 "changes": {"short": {"steps": 6}, "fast_lr": {"lr": 0.1, "simulator": {"remat": 2}}}}


def _registry(tmp_path, **edit) -> str:
    raw = read_yaml(ROOT / "params/experiments.yaml")
    raw["ablations"] = {"demo_speed": {**DEMO_ABLATION, **edit}}
    path = tmp_path / "experiments.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_runs_are_the_baseline_each_change_and_all_combined(tmp_path):
    reg = load_registry(_registry(tmp_path))
    ab = reg.ablation("demo_speed")
    assert ab.runs() == ["paper", "short", "fast_lr", "combined"]
    paper = load_experiment("demo", "paper").reconstruct.attacks["simudy"]
    base = reg.ablation_attack("demo_speed", "paper")
    assert base.model_copy(update={"max_minutes": None, "snapshot_every": 100, "log_every": 100}) == paper
    assert (base.max_minutes, base.snapshot_every) == (10.0, 2)
    fast = reg.ablation_attack("demo_speed", "fast_lr")
    assert (fast.steps, fast.lr, fast.simulator.remat) == (paper.steps, 0.1, 2)
    both = reg.ablation_attack("demo_speed", "combined")
    assert (both.steps, both.lr, both.simulator.remat) == (6, 0.1, 2)
    loo = load_registry(_registry(tmp_path, leave_one_out=True))
    assert loo.ablation("demo_speed").runs() == ["paper", "short", "fast_lr", "without_short", "without_fast_lr",
                                                 "combined"]
    no_short = loo.ablation_attack("demo_speed", "without_short")
    assert (no_short.steps, no_short.lr, no_short.simulator.remat) == (paper.steps, 0.1, 2)
    with pytest.raises(SimudyError, match="the ablation has no run 'without_short'"):
        ab.overrides("without_short")


@pytest.mark.parametrize("edit, message", [
    ({"changes": {"typo": {"lr_": 0.1}}}, r"ablation 'demo_speed', run 'typo': lr_: Extra inputs"),
    ({"method": "loo"}, r"ablation 'demo_speed': 'demo' does not run 'loo'"),
    ({"profile": "gpu"}, r"ablation 'demo_speed': no experiment 'demo' with profiles 'gpu'"),
    ({"at_minutes": [30.0]}, r"at_minutes beyond the budget"),
])
def test_a_wrong_ablation_names_the_file_and_the_problem(tmp_path, edit, message):
    path = _registry(tmp_path, **edit)
    with pytest.raises(SimudyError, match=message) as err:
        load_registry(path)
    assert str(path) in str(err.value)


def test_a_time_budget_stops_the_run_with_a_final_snapshot(tmp_path, demo_victim):
    cfg = load_experiment("demo", "smoke").reconstruct.attacks["simudy"]
    cfg = cfg.model_copy(update={"steps": 50, "snapshot_every": 20, "max_minutes": 1e-9})
    victim = load_victim(demo_victim)
    grants = ThreatConfig(theta0=True, hyperparams=True, dataset_size=True)
    result = SimuDy(cfg).run(victim, ThreatModel.from_victim(victim, grants), tmp_path)
    assert (result.info["steps"], result.info["planned_steps"]) == (1, 50)
    assert [p.name for p in (tmp_path / "snapshots").iterdir()] == ["images_0000001.safetensors"]


def test_summary_times_thresholds_and_reads_ssim_at_time_marks():
    cfg = ablation.AblationConfig(**{**DEMO_ABLATION, "thresholds": [0.1, 0.3], "at_minutes": [1.0, 2.0]})
    curve = pd.DataFrame({"step": [0, 10, 20, 30], "seconds": [0.0, 50.0, 100.0, 130.0],
                          "loss": [np.nan, 0.5, 0.3, 0.2], "ssim": [0.01, 0.12, 0.2, 0.35]})
    runs = {"paper": {"seconds_per_step": 4.3, "steps": 30}}
    row = ablation.summarise(cfg, {"paper": curve}, runs).iloc[0]
    assert row["min_to_0.1"] == pytest.approx(50 / 60) and row["min_to_0.3"] == pytest.approx(130 / 60)
    assert (row["ssim_at_1min"], row["ssim_at_2min"], row["ssim_final"], row["ssim_init"]) == (0.12, 0.2, 0.35, 0.01)
    assert row["changes"] == "(the paper's settings)"


@pytest.mark.slow
def test_every_run_then_the_table(tmp_path, demo_victim):
    # The paper's 30 000 steps stop at the 12-second budget; `short` ends first.
    reg = _registry(tmp_path, changes={"short": {"steps": 4}}, minutes=0.2, at_minutes=[0.01, 0.2])
    root = tmp_path / "out"
    common = ["--registry", reg, "--ablation", "demo_speed", "--victim-dir", demo_victim]
    for run in ["paper", "short", "combined"]:
        assert run_cli("ablation-run", *common, "--run", run, "--out-dir", root / run,
                       "--work-dir", root / "work" / run) == 0
        curve = pd.read_csv(root / run / "curve.csv")
        assert curve["step"].iloc[0] == 0 and curve["step"].is_monotonic_increasing
    seconds = pd.read_csv(root / "paper" / "loss.csv")["seconds"]
    assert seconds.iloc[-2] < 0.2 * 60 <= seconds.iloc[-1]  # stopped at the first step past the budget
    assert run_cli("ablation-table", "--registry", reg, "--ablation", "demo_speed", "--runs-root", root,
                   "--out-dir", root) == 0
    table = pd.read_csv(root / "table.csv")
    assert table["run"].tolist() == ["paper", "short", "combined"]
    assert table.loc[1, "steps"] == 4 and table.loc[1, "changes"] == "steps=4"
    assert "| combined" in (root / "table.md").read_text()
    assert (root / "curve.png").stat().st_size > 10_000


def test_the_log_shows_the_ssim_at_every_snapshot(tmp_path, demo_victim, caplog):
    r = load_experiment("demo", "smoke").reconstruct
    cfg = r.attacks["simudy"].model_copy(update={"steps": 4, "snapshot_every": 2})
    with caplog.at_level(logging.INFO, logger="simudy"):
        monitor = progress_monitor(load_dataset(demo_victim / "truth.npz"))
        run_attack(cfg, r.threat, "simudy", demo_victim, tmp_path / "out", tmp_path / "work", monitor)
    lines = [rec.getMessage() for rec in caplog.records if "against the truth" in rec.getMessage()]
    assert [line.split(":")[0] for line in lines] == ["simudy step 2", "simudy step 4"]
    assert 0 < float(lines[-1].split("ssim ")[1].split()[0]) < 1
