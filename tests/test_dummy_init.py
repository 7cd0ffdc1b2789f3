"""Fig. 8's two features: dummies started from natural images of their classes, and the images
kept at intervals for a figure of the reconstruction over time."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from simudy.attacks import ThreatModel, get_attack
from simudy.checkpoints import load_weights
from simudy.config import load_experiment
from simudy.data import load_dataset
from simudy.errors import SimudyError
from simudy.report import _convergence, make_report
from tests.conftest import ROOT, reconstruct_demo, run_cli
from tests.test_attacks import ALL, attack_config, tiny_victim


def _pool(n_per_class: int, classes: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    images = labels.view(-1, 1, 1, 1) + torch.arange(n_per_class).repeat(classes).view(-1, 1, 1, 1) / 10
    return images.expand(-1, 1, 6, 6).clone(), labels


def test_natural_dummies_are_pool_images_of_their_own_class_in_order(tmp_path):
    victim, _ = tiny_victim()
    pool, pool_labels = _pool(3)
    threat = replace(ThreatModel.from_victim(victim, ALL), natural=(pool, pool_labels))
    attack = get_attack(attack_config("simudy", sim_epochs=1, init_images="natural"))
    attack.start(victim, threat, torch.device("cpu"))
    x, labels = attack.initial_images, attack.labels
    assert torch.equal(x[:, :, 0, 0].flatten().floor().long(), labels)  # each image of its dummy's class
    for c in (0, 1):  # the first images of that class, in the pool's order
        assert x[labels == c, 0, 0, 0].tolist() == pytest.approx([c + k / 10 for k in range((labels == c).sum())])


def test_natural_init_refuses_a_missing_or_short_pool():
    victim, _ = tiny_victim()
    attack = get_attack(attack_config("simudy", init_images="natural"))
    with pytest.raises(SimudyError, match="given no natural images"):
        attack.start(victim, ThreatModel.from_victim(victim, ALL), torch.device("cpu"))
    short = replace(ThreatModel.from_victim(victim, ALL), natural=_pool(1))
    with pytest.raises(SimudyError, match="needs 2 natural images of class"):
        attack.start(victim, short, torch.device("cpu"))


def test_noise_init_is_unchanged_by_the_option(tmp_path):
    """The default draws the same dummies and labels as before the option existed."""
    victim, _ = tiny_victim()
    threat = ThreatModel.from_victim(victim, ALL)
    runs = [get_attack(attack_config("simudy", **over)) for over in ({}, {"init_images": "noise"})]
    for attack in runs:
        attack.start(victim, threat, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    expected = runs[0].cfg.init_scale * torch.randn((4, *threat.image_shape), generator=gen)
    assert all(torch.equal(a.initial_images, expected) for a in runs)
    assert torch.equal(runs[0].labels, runs[1].labels)


def test_history_keeps_the_initial_images_and_every_kept_step(tmp_path):
    victim, _ = tiny_victim()
    cfg = attack_config("simudy", sim_epochs=1, steps=6, snapshot_every=2, history_every=4)
    result = get_attack(cfg).run(victim, ThreatModel.from_victim(victim, ALL), tmp_path)
    history, steps = result.extras["history"], result.extras["history_steps"]
    assert steps.tolist() == [0, 4]
    assert history.shape == (2, *result.images.shape)
    assert not torch.equal(history[0], history[1])
    with pytest.raises(ValueError, match="not a multiple of snapshot_every"):
        attack_config("simudy", snapshot_every=3, history_every=4)


def test_the_cli_starts_from_the_test_split_and_the_report_draws_the_history(victim, tmp_path, digits_file):
    over = ["--set", "reconstruct.attacks.simudy.init_images=natural",
            "--set", "reconstruct.attacks.simudy.history_every=10"]
    code, out = reconstruct_demo(victim, tmp_path, *over, "--natural-images", str(digits_file))
    assert code == 0
    saved = load_weights(out / "reconstruction.safetensors")
    test_split = load_dataset(digits_file, split="test")
    first = saved["history"][0]
    own = load_dataset(victim / "truth.npz").normalised()
    assert any(torch.allclose(first[0], img) for img in test_split.normalised())
    assert not any(torch.allclose(first[i], img) for i in range(len(first)) for img in own)
    assert saved["history_steps"].tolist() == [0, 10, 20]

    evaluate = tmp_path / "evaluate" / "simudy"
    assert run_cli("pair", "--victim-dir", victim, "--reconstruct-dir", out, "--out-dir", evaluate) == 0
    (tmp_path / "reconstruct").mkdir()
    out.rename(tmp_path / "reconstruct" / "simudy")
    cfg = load_experiment("demo", "smoke", ROOT / "params/experiments.yaml")
    make_report(cfg, victim, tmp_path / "reconstruct", tmp_path / "evaluate", tmp_path / "report",
                tmp_path / "metrics.json")
    assert (tmp_path / "report" / "methods" / "simudy_over_time.png").stat().st_size > 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())["simudy"]
    assert metrics["curve"]["step"] == [0, 10, 20]
    assert metrics["curve"]["ssim"][-1] == pytest.approx(metrics["ssim"], abs=1e-4)  # the final images
    assert "loss_drop_last_quarter" in metrics


def test_the_cli_refuses_natural_images_of_other_classes(victim, tmp_path, digits_file):
    other = tmp_path / "other.npz"
    data = dict(np.load(digits_file, allow_pickle=False))
    data["class_names"] = np.array([f"c{i}" for i in range(len(data["class_names"]))])
    np.savez(other, **data)
    code, _ = reconstruct_demo(victim, tmp_path, "--set", "reconstruct.attacks.simudy.init_images=natural",
                               "--natural-images", str(other))
    assert code == 2


def test_a_run_is_scored_at_the_reference_runs_wall_time():
    def result(name, seconds, ssim, total):
        curve = pd.DataFrame({"step": range(len(ssim)), "seconds": seconds, "ssim": ssim})
        return SimpleNamespace(name=name, curve=curve, run={"seconds": total},
                               loss=pd.DataFrame({"loss": [4.0, 3.0, 2.0, 1.0, 1.0, 0.9, 0.9, 0.9]}))

    fast = result("simudy", [0, 10, 20], [0.0, 0.5, 0.8], 20.0)
    slow = result("loo", [0, 15, 30, 45], [0.0, 0.1, 0.2, 0.3], 45.0)
    cfg = SimpleNamespace(evaluate=SimpleNamespace(time_reference="simudy"))
    out = _convergence(cfg, slow, [fast, slow])
    assert out["ssim_at_simudy_seconds"] == 0.1 and out["reference_seconds"] == 20.0
    assert out["loss_drop_last_quarter"] == pytest.approx(0.0)  # 0.9 -> 0.9: a plateau
    assert "ssim_at_simudy_seconds" not in _convergence(SimpleNamespace(evaluate=SimpleNamespace(
        time_reference=None)), slow, [fast, slow])
