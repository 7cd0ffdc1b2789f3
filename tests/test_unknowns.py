"""When the attacker does not know the training recipe (Sec. 3, 4.3, 4.5): the learning-rate
search, dummy sets of another size than the training set, each dummy's contribution, and the
sweeps that make Figs. 2, 3, 7, 9 and 10."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from simudy.attacks import ThreatModel, get_attack
from simudy.config import ThreatConfig, load_experiment, load_registry, point_name
from simudy.contribution import share_vectors
from simudy.models import build_model, flatten
from simudy.simulate import TrainingPlan, simulate
from simudy.victim import load_victim
from tests.conftest import ROOT, reconstruct_demo, run_cli

REGISTRY = ROOT / "params/experiments.yaml"
WITHHELD = "reconstruct.threat.hyperparams=false"
GRID = "reconstruct.attacks.simudy.search={batch_size: 4, probe_steps: 2, lrs: [0.05, 0.01, 0.002]}"
SHORT = "reconstruct.attacks.simudy.steps=4"


def _run_json(out) -> dict:
    return json.loads((out / "run.json").read_text())


def test_search_probes_every_lr_and_continues_the_lowest_loss(victim, tmp_path):
    code, out = reconstruct_demo(victim, tmp_path, "--set", WITHHELD, "--set", GRID, "--set", SHORT)
    assert code == 0
    search = _run_json(out)["search"]
    losses = {p["lr"]: p["loss"] for p in search["probes"]}
    assert sorted(losses) == [0.002, 0.01, 0.05] and all(np.isfinite(list(losses.values())))
    assert search["lr"] == min(losses, key=losses.get) and search["batch_size"] == 4
    loss = pd.read_csv(out / "loss.csv")
    assert loss["step"].tolist() == [1, 2, 3, 4]  # the chosen probe's steps are the run's first
    assert loss.loc[1, "loss"] == pytest.approx(losses[search["lr"]])


def test_withheld_hyperparameters_are_never_read(victim, tmp_path):
    """The victim's recorded lr and batch size change nothing when the threat model withholds them."""
    _, first = reconstruct_demo(victim, tmp_path / "a", "--set", WITHHELD, "--set", GRID, "--set", SHORT)
    meta = json.loads((victim / "victim.json").read_text())
    meta["training"].update(lr=0.5, batch_size=3, epochs=7)
    (victim / "victim.json").write_text(json.dumps(meta))
    _, second = reconstruct_demo(victim, tmp_path / "b", "--set", WITHHELD, "--set", GRID, "--set", SHORT)
    a, b = load_file(first / "reconstruction.safetensors"), load_file(second / "reconstruction.safetensors")
    assert torch.equal(a["images"], b["images"])
    assert _choice(first) == _choice(second)


def _choice(out) -> dict:
    """A run's search record without its timings."""
    search = _run_json(out)["search"]
    return {**search, "probe_seconds": None, "probes": [{**p, "seconds": None} for p in search["probes"]]}


def test_a_killed_search_keeps_its_finished_probes(victim, tmp_path, caplog):
    cfg = load_experiment("demo", "smoke", REGISTRY, [WITHHELD, GRID, SHORT]).reconstruct
    threat = ThreatModel.from_victim(load_victim(victim), cfg.threat)
    first = get_attack(cfg.method("simudy")).run(load_victim(victim), threat, tmp_path)
    caplog.clear()
    again = get_attack(cfg.method("simudy")).run(load_victim(victim), threat, tmp_path)
    # The chosen lr's folder went on to the end; the others stopped after the probe.
    assert caplog.text.count("resuming from the snapshot at step 2") == 2
    assert caplog.text.count("resuming from the snapshot at step 4") == 2
    assert torch.equal(first.images, again.images)
    assert [p["loss"] for p in first.info["search"]["probes"]] == [p["loss"] for p in again.info["search"]["probes"]]


@pytest.mark.bad_input
@pytest.mark.parametrize("setting, key", [
    ("reconstruct.attacks.simudy.search.lrs=[0.01, -0.02]", "search.lrs.1"),
    ("reconstruct.attacks.simudy.search.lrs=[0.01, 0.0]", "search.lrs.1"),
    ("reconstruct.attacks.simudy.search.lrs=[]", "search.lrs"),
    ("reconstruct.attacks.simudy.search.lrs=[0.01, 0.01]", "search.lrs"),
    ("reconstruct.attacks.simudy.n_images=0", "n_images"),
    ("reconstruct.attacks.simudy.dummies=0", "dummies"),
    ("reconstruct.attacks.simudy.search.probe_steps=21", "search.probe_steps"),
    ("reconstruct.sweep={method: simudy, grid: {sim_lr: []}}", "grid.sim_lr"),
    ("reconstruct.sweep={method: simudy, grid: {sim_lrr: [0.01]}}", "sim_lrr"),
    ("reconstruct.sweep={method: loo, grid: {sim_lr: [0.01]}}", "sweep.method"),
])
def test_bad_search_or_sweep_settings_fail_before_any_work(victim, tmp_path, capsys, setting, key):
    code, out = reconstruct_demo(victim, tmp_path, "--set", WITHHELD, "--set", setting)  # 20 steps
    err = capsys.readouterr().err
    assert code == 2 and key in err and "experiment 'demo' at profile 'smoke'" in err
    assert not (tmp_path / "work").exists() and not out.exists()


def test_the_probe_may_be_longer_than_the_run_where_nothing_is_searched():
    cfg = load_experiment("demo", "smoke", REGISTRY, ["reconstruct.attacks.simudy.search.probe_steps=500"])
    assert not cfg.reconstruct.method("simudy").searches(cfg.reconstruct.threat)


@pytest.mark.parametrize("arch, kwargs, shape", [("mlp", {"hidden": [16]}, (1, 8, 8)),
                                                 ("resnet18", {"width": 4}, (3, 8, 8))])
def test_each_images_share_adds_up_to_the_simulated_change(arch, kwargs, shape):
    torch.manual_seed(0)
    model = build_model(arch, image_shape=shape, num_classes=10, **kwargs).eval()
    theta0 = {k: v.detach() for k, v in model.named_parameters()}
    x, y = torch.randn(7, *shape), torch.arange(7) % 10
    plan = TrainingPlan(epochs=3, batch_size=3, lr=0.05)
    shares = share_vectors(model, theta0, x, y, plan)
    change = flatten(simulate(model, theta0, x, y, plan, create_graph=False).grad_sum)
    assert shares.shape == (7, change.numel())
    torch.testing.assert_close(shares.sum(0), change, rtol=1e-4, atol=1e-6)


def test_an_oversized_dummy_set_pairs_every_image_and_reports_the_rest(victim, tmp_path):
    code, out = reconstruct_demo(victim, tmp_path, "--set", "reconstruct.attacks.simudy.dummies=1.5",
                                 "--score-dir", tmp_path / "score")
    assert code == 0
    n = len(np.load(victim / "truth.npz")["labels"])
    assert load_file(out / "reconstruction.safetensors")["contribution"].shape == (round(1.5 * n),)
    metrics = json.loads((tmp_path / "score/metrics.json").read_text())
    dummies = pd.read_csv(tmp_path / "score/dummies.csv")
    assert metrics["n_pairs"] == n and len(dummies) == round(1.5 * n) and dummies["matched"].sum() == n
    unmatched = dummies.loc[~dummies["matched"], "contribution"]
    assert metrics["contribution_unmatched_mean"] == pytest.approx(unmatched.mean())
    assert metrics["contribution_ratio"] == pytest.approx(
        metrics["contribution_matched_mean"] / metrics["contribution_unmatched_mean"])


def test_a_small_dummy_set_leaves_training_images_unpaired(victim, tmp_path):
    code, _ = reconstruct_demo(victim, tmp_path, "--set", "reconstruct.attacks.simudy.dummies=0.5",
                               "--score-dir", tmp_path / "score")
    metrics = json.loads((tmp_path / "score/metrics.json").read_text())
    assert code == 0 and metrics["n_pairs"] == metrics["n_recon"] == metrics["n_train"] // 2
    assert metrics["ssim"] == pytest.approx(metrics["ssim_matched"] / 2)
    assert "contribution_unmatched_mean" not in metrics


def test_sweep_points_are_named_runs_of_the_method():
    cfg = load_experiment("fig3", "paper", REGISTRY).reconstruct
    runs = cfg.runs()
    assert len(runs) == 21 and "simudy_sim_batch_size12_sim_lr0p007" in runs and "simudy" not in runs
    point = cfg.method("simudy_sim_batch_size12_sim_lr0p007")
    assert (point.sim_batch_size, point.sim_lr, point.steps) == (12, 0.007, 30000)
    assert cfg.base_method("simudy_sim_batch_size12_sim_lr0p007") == "simudy"
    fig7 = load_experiment("fig7", "paper", REGISTRY).reconstruct
    assert [fig7.method(r).search.batch_size for r in fig7.runs()] == [20, 32, 12]
    assert point_name("simudy", {"dummies": 1.5, "search.batch_size": 12.0}) == "simudy_dummies1p5_batch_size12"


def test_every_figure_of_the_unknowns_has_a_paper_and_a_cpu_target():
    reg = load_registry(REGISTRY)
    for name in ("fig2", "fig3", "fig7", "fig9", "fig10"):
        assert {"paper", "cpu"} <= reg.experiments[name].profiles.keys()
        assert {"cpu"} <= reg.experiments[f"{name}_mlp"].profiles.keys()
    assert not reg.resolve("fig7", "paper").reconstruct.threat.hyperparams
    assert not reg.resolve("fig10", "paper").reconstruct.threat.dataset_size
    assert reg.resolve("fig4_search", "cpu").reconstruct.method("simudy").searches(ThreatConfig(
        theta0=True, hyperparams=False, dataset_size=True))


def test_sweep_report_ranks_loss_against_ssim(victim, tmp_path):
    sweep = "reconstruct.sweep={method: simudy, grid: {sim_lr: [0.002, 0.01, 0.05]}}"
    cfg = load_experiment("demo", "smoke", REGISTRY, [sweep])
    common = ["--registry", REGISTRY, "--experiment", "demo", "--profile", "smoke", "--set", sweep,
              "--set", "reconstruct.attacks.simudy.steps=8", "--set", "reconstruct.attacks.simudy.search.probe_steps=5"]
    for run in cfg.reconstruct.runs():
        assert run_cli("reconstruct", *common, "--method", run, "--victim-dir", victim,
                       "--out-dir", tmp_path / "reconstruct" / run, "--work-dir", tmp_path / "work" / run,
                       "--score-dir", tmp_path / "evaluate" / run) == 0
    assert run_cli("sweep-report", *common, "--victim-dir", victim, "--reconstruct-root", tmp_path / "reconstruct",
                   "--evaluate-root", tmp_path / "evaluate", "--out-dir", tmp_path / "report",
                   "--metrics-out", tmp_path / "sweep.json") == 0
    table = pd.read_csv(tmp_path / "report/sweep.csv")
    assert table["run"].tolist() == cfg.reconstruct.runs() and table["sim_lr"].tolist() == [0.002, 0.01, 0.05]
    metrics = json.loads((tmp_path / "sweep.json").read_text())
    assert -1 <= metrics["spearman_final_loss_ssim"] <= 1
    group = metrics["by_group"]["all"]
    assert group["probe_pick_lr"] == table.loc[table["probe_loss"].idxmin(), "sim_lr"]
    assert (tmp_path / "report/sweep.png").stat().st_size > 10_000
