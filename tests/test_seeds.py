"""Runs repeated over attack seeds (`reconstruct.seeds`): the repeats are runs of their own, the
report adds each seed's metrics under `seeds`, and the catalogue shows their mean ± sd."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from simudy import catalogue, lineage
from simudy.checkpoints import load_weights
from simudy.config import load_experiment, load_registry, read_yaml
from simudy.errors import SimudyError
from simudy.report import make_report
from simudy.sweep import run_numbers, seed_numbers, sweep_metrics, sweep_table
from tests.conftest import ROOT, run_cli

REGISTRY = ROOT / "params/experiments.yaml"


def _registry(tmp_path, seeds, experiment="figB", profile="cpu"):
    raw = read_yaml(REGISTRY)
    raw["experiments"][experiment]["profiles"][profile]["reconstruct"]["seeds"] = seeds
    path = tmp_path / "experiments.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_every_run_is_repeated_at_the_other_seeds(tmp_path):
    rc = load_registry(_registry(tmp_path, [0, 2, 5])).resolve("figB", "cpu").reconstruct
    points = ["simudy_losscosine", "simudy_losseuclidean"]
    assert rc.runs() == [*points, *(f"{p}_seed{k}" for p in points for k in (2, 5))]
    assert rc.primary_runs() == points
    assert rc.repeats("simudy_losseuclidean") == {0: "simudy_losseuclidean", 2: "simudy_losseuclidean_seed2",
                                                  5: "simudy_losseuclidean_seed5"}
    repeat = rc.method("simudy_losseuclidean_seed5")
    assert (repeat.seed, repeat.loss) == (5, "euclidean")
    assert repeat.model_dump() == {**rc.method("simudy_losseuclidean").model_dump(), "seed": 5}
    assert rc.primary("simudy_losseuclidean_seed5") == "simudy_losseuclidean"
    assert rc.base_method("simudy_losseuclidean_seed5") == "simudy"
    assert load_experiment("figB", "cpu", REGISTRY).reconstruct.repeats("simudy_losscosine") == {}


@pytest.mark.parametrize("seeds, message", [
    ([1, 2], r"leave out run 'simudy_losscosine''s own seed \(0\)"),
    ([0, 1, 1], "list a seed twice"),
])
def test_bad_seeds_are_refused_naming_the_problem(tmp_path, seeds, message):
    with pytest.raises(SimudyError, match=message):
        load_registry(_registry(tmp_path, seeds))


def test_only_the_repeats_depend_on_the_seeds_setting(tmp_path):
    path = _registry(tmp_path, [0, 1])
    raw, reg = read_yaml(path), load_registry(path)

    def keys(run):
        return lineage.step_keys(raw, reg, "simulate_and_reconstruct",
                                 {"experiment": "figB", "profile": "cpu", "method": run})

    assert "experiments.figB.profiles.cpu.reconstruct.seeds" not in keys("simudy_losscosine")
    assert "experiments.figB.profiles.cpu.reconstruct.seeds" in keys("simudy_losscosine_seed1")


def test_the_report_gives_each_seeds_metrics_and_the_catalogue_their_mean(victim, tmp_path):
    seeds = ["--set", "reconstruct.seeds=[0, 1]"]
    for run in ("simudy", "simudy_seed1"):
        out, evaluate = tmp_path / "reconstruct" / run, tmp_path / "evaluate" / run
        assert run_cli("reconstruct", "--registry", REGISTRY, "--experiment", "demo", "--profile", "smoke",
                       "--method", run, "--victim-dir", victim, "--out-dir", out, "--work-dir",
                       tmp_path / "work" / run, *seeds) == 0
        assert run_cli("pair", "--victim-dir", victim, "--reconstruct-dir", out, "--out-dir", evaluate) == 0
    images = [load_weights(tmp_path / "reconstruct" / run / "reconstruction.safetensors")["images"]
              for run in ("simudy", "simudy_seed1")]
    assert not images[0].equal(images[1])  # the seed draws other dummies

    cfg = load_experiment("demo", "smoke", REGISTRY, overrides=["reconstruct.seeds=[0, 1]"])
    rows = make_report(cfg, victim, tmp_path / "reconstruct", tmp_path / "evaluate", tmp_path / "report",
                       tmp_path / "metrics.json")
    assert rows["method"].tolist() == ["simudy"]  # the figures and the table show the run at its own seed
    assert not (tmp_path / "report" / "methods" / "simudy_seed1.png").exists()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert list(metrics) == ["simudy"]
    per_seed = [metrics["simudy"]["seeds"][k]["ssim"] for k in ("0", "1")]
    assert per_seed[0] == metrics["simudy"]["ssim"] and per_seed[0] != per_seed[1]
    value = catalogue.lookup(metrics, ("simudy", "ssim"), tmp_path / "metrics.json")
    assert value.seeds == tuple(per_seed)


def test_a_sweep_point_gives_its_numbers_over_the_seeds(tmp_path):
    cfg = load_registry(_registry(tmp_path, [0, 1, 2])).resolve("figB", "cpu")
    ssim = {"simudy_losscosine": 0.5, "simudy_losscosine_seed1": 0.7, "simudy_losscosine_seed2": 0.6,
            "simudy_losseuclidean": 0.2, "simudy_losseuclidean_seed1": 0.2, "simudy_losseuclidean_seed2": 0.2}
    results = [SimpleNamespace(name=run, loss=pd.DataFrame({"step": [1], "loss": [0.1]}),
                               run={"final_loss": 0.1, "seconds": 1.0},
                               metrics={"ssim": value, "ssim_matched": value, "n_recon": 20})
               for run, value in ssim.items()]
    results[1].run["final_loss"] = 0.4
    runs = run_numbers(cfg, results)
    table = sweep_table(cfg, runs).set_index("run")
    assert list(table.index) == ["simudy_losscosine", "simudy_losseuclidean"]  # one row per point
    assert table.loc["simudy_losscosine", "ssim"] == 0.5  # the run at its own seed
    assert table.loc["simudy_losscosine", ["ssim_seed_mean", "ssim_seed_sd", "n_seeds"]].tolist() == \
        pytest.approx([0.6, 0.1, 3])
    assert table.loc["simudy_losseuclidean", "ssim_seed_sd"] == pytest.approx(0.0)

    # The metrics keep every seed's numbers, so the catalogue gives any of them (here the final
    # loss, which the table has for seed 0 only) as mean ± sd.
    metrics = sweep_metrics(cfg, table.reset_index(), seed_numbers(cfg, runs))
    assert metrics["points"]["simudy_losscosine"]["final_loss"] == 0.1
    assert metrics["points"]["simudy_losscosine"]["seeds"]["1"]["final_loss"] == 0.4
    value = catalogue.lookup(metrics, ("points", "simudy_losscosine", "final_loss"), tmp_path / "sweep.json")
    assert value.seeds == (0.1, 0.4, 0.1)


def test_an_lr_sweep_gives_its_curves_numbers_over_the_seeds(tmp_path):
    cfg = load_experiment("fig2_mlp", "cpu", REGISTRY)
    lrs = cfg.reconstruct.sweep.grid["sim_lr"]
    best = {0: 6, 1: 2, 2: 4}  # each seed's best lr, by its index in the grid

    def result(i, seed):
        point = list(cfg.reconstruct.sweep.points())[i]
        name = point if seed == 0 else f"{point}_seed{seed}"
        ssim = 0.9 - 0.1 * abs(i - best[seed])
        return SimpleNamespace(name=name, loss=pd.DataFrame({"step": [1], "loss": [1.0]}),
                               run={"final_loss": 1.0 - ssim, "seconds": 1.0},
                               metrics={"ssim": ssim, "ssim_matched": ssim, "n_recon": 60})

    runs = run_numbers(cfg, [result(i, seed) for seed in best for i in range(len(lrs))])
    table = sweep_table(cfg, runs)
    metrics = sweep_metrics(cfg, table, seed_numbers(cfg, runs))
    assert metrics["by_group"]["all"]["best_lr"] == lrs[best[0]]  # the runs at their own seed
    assert [metrics["seeds"][str(k)]["by_group"]["all"]["best_lr"] for k in best] == [lrs[i] for i in best.values()]
    assert metrics["seeds"]["1"]["spearman_final_loss_ssim"] == pytest.approx(-1.0)

    def read(*parts):
        return catalogue.lookup(metrics, parts, tmp_path / "sweep.json").seeds

    assert read("by_group", "all", "best_lr") == tuple(lrs[i] for i in best.values())
    assert read("points", "simudy_sim_lr0p001", "ssim") == pytest.approx((0.3, 0.7, 0.5))  # a point's own seeds
