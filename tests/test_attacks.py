"""Every attack on a tiny victim: shapes, its own objective improving, the threat model's
limits; and gradient inversion on a linear model, where one gradient determines the image."""

from __future__ import annotations

import pytest
import torch
from pydantic import TypeAdapter

from simudy.attacks import MODULES, ThreatModel, get_attack
from simudy.config import AnyAttack, ThreatConfig, VictimConfig, load_registry
from simudy.errors import SimudyError
from simudy.models import build_model, centre_on, init_first_layer
from simudy.train import finetune
from simudy.victim import Victim
from tests.conftest import ROOT

CATALOGUE = load_registry(ROOT / "params/experiments.yaml").defaults.reconstruct["attacks"]
ALL = ThreatConfig(theta0=True, hyperparams=True, dataset_size=True)
SHAPE = (1, 6, 6)


def attack_config(method: str, **over):
    raw = {**CATALOGUE[method], "steps": 40, "snapshot_every": 1000, "log_every": 1000, "device": "cpu", **over}
    return TypeAdapter(AnyAttack).validate_python(raw)


def tiny_victim(n=4, hidden=(16,), classes=2, outputs=None, loss="cross_entropy", epochs=5, batch_size=2,
                first_layer_std=None, seed=0, **model_kw) -> tuple[Victim, torch.Tensor]:
    """An MLP trained on n random images the given way; returns it and the images."""
    torch.manual_seed(seed)
    x = torch.randn(n, *SHAPE)
    y = torch.arange(n) % classes
    model = build_model("mlp", SHAPE, outputs or classes, hidden=list(hidden), **model_kw).eval()
    if first_layer_std is not None:
        init_first_layer(model, first_layer_std)
    centre_on(model, x, [0.25])
    theta0 = {k: v.detach().clone() for k, v in model.named_parameters()}
    cfg = VictimConfig(per_class=1, offset=0, epochs=epochs, batch_size=batch_size, lr=0.05, loss=loss)
    finetune(model, x, y, cfg)
    thetaf = {k: v.detach().clone() for k, v in model.named_parameters()}
    meta = {"image_shape": list(SHAPE), "num_classes": classes, "num_outputs": outputs or classes, "n_images": n,
            "mean": [0.5], "std": [0.25],
            "training": {"epochs": epochs, "batch_size": batch_size, "lr": 0.05, "loss": loss}}
    return Victim(meta=meta, model=model, theta0=theta0, thetaf=thetaf), x


CASES = {
    "simudy": ({}, {"sim_epochs": 2}),
    "loo": ({}, {}),
    "loo_authors": ({}, {"l2_steps": 1000, "lr": 0.01}),  # stay in the L2 stage: one objective throughout
    "buzaglo": ({}, {"target": "change", "lr": 0.05}),
    "buzaglo_authors": ({}, {"l2_steps": 1000, "lr": 0.01}),
    # Haim et al.'s victim recipe: first-layer bias only, centred inputs, small first layer.
    "haim": ({"classes": 2, "outputs": 1, "loss": "logistic", "first_layer_std": 0.001, "epochs": 50,
              "batch_size": 4, "bias": "first", "centred": True}, {"lr": 0.05}),
    "gradinv": ({"epochs": 1, "batch_size": 4}, {"labels": "balanced"}),
}


@pytest.mark.parametrize("method", sorted(CASES))
def test_each_attack_improves_its_objective_and_returns_images(method, tmp_path):
    victim_kw, over = CASES[method]
    victim, _ = tiny_victim(**victim_kw)
    cfg = attack_config(method, **over)
    result = get_attack(cfg).run(victim, ThreatModel.from_victim(victim, ALL), tmp_path)
    factor = getattr(cfg, "candidates", 1.0)
    assert result.images.shape == (int(4 * factor), *SHAPE)
    assert torch.isfinite(result.images).all()
    if result.labels is not None:
        assert result.labels.shape == (len(result.images),)
    losses = [float(r["loss"]) for r in result.info["loss_rows"]]
    assert len(losses) == cfg.steps
    assert sum(losses[-3:]) < 0.9 * sum(losses[:3]), losses


def test_every_registered_attack_is_in_the_catalogue():
    assert {c["attack"] for c in CATALOGUE.values()} == set(MODULES)


def test_gradient_inversion_recovers_the_image_of_a_linear_model_trained_one_step(tmp_path):
    victim, x = tiny_victim(n=1, hidden=(), classes=3, epochs=1, batch_size=1)
    cfg = attack_config("gradinv", steps=400, init_scale=0.1, tv_weight=0.0)
    result = get_attack(cfg).run(victim, ThreatModel.from_victim(victim, ALL), tmp_path)
    assert result.labels.tolist() == [0]  # iDLG reads the label off the bias gradient
    # The cosine loss barely sees the image's scale; the image itself comes back exactly.
    cos = torch.nn.functional.cosine_similarity(result.images.flatten(), x.flatten(), dim=0).item()
    assert cos > 0.999, cos


def _rejects(method, grants, match, victim_kw=None, **over):
    victim, _ = tiny_victim(**(victim_kw or {}))
    threat = ThreatModel.from_victim(victim, ThreatConfig(**{**ALL.model_dump(), **grants}))
    with pytest.raises(SimudyError, match=match):
        get_attack(attack_config(method, **over)).run(victim, threat, None)


def test_attacks_needing_theta0_refuse_a_threat_model_without_it():
    for method in ["simudy", "loo", "loo_authors", "buzaglo_authors", "gradinv"]:
        _rejects(method, {"theta0": False}, r"needs \['theta0'\], which the threat model does not grant")


def test_unknown_dataset_size_is_refused_unless_preset():
    # Withheld hyper-parameters are searched for instead (tests/test_unknowns.py).
    _rejects("simudy", {"hyperparams": False, "dataset_size": False}, r"needs \['dataset_size'\]")
    _rejects("loo", {"dataset_size": False}, r"needs \['dataset_size'\]")


def test_gradient_inversion_refuses_a_victim_trained_more_than_one_step():
    _rejects("gradinv", {}, "trained for one step", victim_kw={"epochs": 2})


def test_kkt_on_thetaf_alone_runs_without_theta0(tmp_path):
    victim, _ = tiny_victim(classes=2, outputs=1, loss="logistic", first_layer_std=0.001, epochs=20, batch_size=4)
    grants = ThreatConfig(theta0=False, hyperparams=False, dataset_size=True)
    cfg = attack_config("haim", steps=3, target="thetaf")
    result = get_attack(cfg).run(victim, ThreatModel.from_victim(victim, grants), tmp_path)
    assert result.images.shape == (8, *SHAPE)
    # A preset dummy-set size and simulation settings stand in for what is not granted.
    cfg = attack_config("simudy", steps=2, n_images=3, sim_lr=0.05, sim_batch_size=2, sim_epochs=1)
    none = ThreatConfig(theta0=True, hyperparams=False, dataset_size=False)
    result = get_attack(cfg).run(victim, ThreatModel.from_victim(victim, none), tmp_path / "s")
    assert result.images.shape == (3, *SHAPE)
