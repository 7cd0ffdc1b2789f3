"""The ViT (App. C.6): a plain function of its parameters that the simulator reproduces exactly,
the position-embedding term of SimuDy's loss, and attacks that swap ReLUs refusing it."""

from __future__ import annotations

import pytest
import torch

from simudy.attacks import ThreatModel, get_attack
from simudy.config import VictimConfig
from simudy.errors import SimudyError
from simudy.models import build_model
from simudy.train import finetune
from simudy.victim import Victim, VictimMeta
from tests.test_attacks import ALL, attack_config, tiny_victim

SHAPE = (1, 8, 8)
KW = {"patch": 4, "width": 8, "depth": 1, "heads": 2}


def vit_victim(n=4, classes=2, epochs=3) -> tuple[Victim, torch.Tensor]:
    torch.manual_seed(0)
    x, y = torch.randn(n, *SHAPE), torch.arange(n) % classes
    model = build_model("vit", SHAPE, classes, **KW).eval()
    theta0 = {k: v.detach().clone() for k, v in model.named_parameters()}
    finetune(model, x, y, VictimConfig(per_class=1, offset=0, epochs=epochs, batch_size=2, lr=0.05))
    thetaf = {k: v.detach().clone() for k, v in model.named_parameters()}
    meta = {"image_shape": list(SHAPE), "num_classes": classes, "num_outputs": classes, "n_images": n,
            "mean": [0.5], "std": [0.25], "training": {"epochs": epochs, "batch_size": 2, "lr": 0.05,
                                                       "loss": "cross_entropy"}}
    return Victim(meta=meta, model=model, theta0=theta0, thetaf=thetaf), x


def test_the_vit_tokenises_patches_and_names_its_position_embedding():
    model = build_model("vit", (3, 32, 32), 10, **{**KW, "width": 16, "depth": 2})
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert model.position_embedding == "pos_embedding"
    assert dict(model.named_parameters())["pos_embedding"].shape == (1, 8 * 8 + 1, 16)
    with pytest.raises(SimudyError, match="patch 5 does not tile 32x32 images"):
        build_model("vit", (3, 32, 32), 10, patch=5, width=16, depth=1, heads=2)
    with pytest.raises(SimudyError, match="width 10 is not a multiple of heads 4"):
        build_model("vit", (3, 32, 32), 10, patch=4, width=10, depth=1, heads=4)


def test_the_simulation_of_the_true_images_reproduces_the_vits_training():
    victim, x = vit_victim()
    attack = get_attack(attack_config("simudy", sim_epochs=3, position_weight=0.5))
    attack.start(victim, ThreatModel.from_victim(victim, ALL), torch.device("cpu"))
    attack.labels = torch.arange(len(x)) % 2  # the true images with their true labels
    plan = attack.plan(attack.cfg.steps)  # past clip_fraction: no clipping, as the victim trained
    loss, info = attack.objective(x, plan)
    assert info["distance"] < 1e-5 and info["position"] < 1e-5
    noise = torch.randn_like(x).requires_grad_(True)
    loss, info = attack.objective(noise, plan)
    loss.backward()  # through the simulated training: second order through the attention
    assert info["position"] > 1e-3 and noise.grad.abs().sum() > 0 and torch.isfinite(noise.grad).all()


def test_the_position_term_changes_the_loss_only_when_weighted():
    victim, x = vit_victim()
    threat = ThreatModel.from_victim(victim, ALL)
    noise = torch.randn_like(x)
    losses = {}
    for beta in (0.0, 2.0):
        attack = get_attack(attack_config("simudy", sim_epochs=3, position_weight=beta))
        attack.start(victim, threat, torch.device("cpu"))
        losses[beta], info = attack.objective(noise, attack.plan(attack.cfg.steps))
    assert "position" in info
    assert losses[2.0].item() == pytest.approx(losses[0.0].item() + 2.0 * info["position"], rel=1e-5)


def test_the_position_term_needs_a_model_that_names_its_embedding():
    victim, _ = tiny_victim()
    attack = get_attack(attack_config("simudy", position_weight=1.0))
    with pytest.raises(SimudyError, match="position_weight needs a model that names its position embedding"):
        attack.start(victim, ThreatModel.from_victim(victim, ALL), torch.device("cpu"))


@pytest.mark.parametrize("method", ["loo", "buzaglo"])
def test_attacks_that_swap_relus_refuse_a_vit(tmp_path, method):
    victim, _ = vit_victim()
    over = {"target": "change"} if method == "buzaglo" else {}
    with pytest.raises(SimudyError, match="ViT has no ReLU activations to swap"):
        get_attack(attack_config(method, steps=2, **over)).run(victim, ThreatModel.from_victim(victim, ALL), tmp_path)


def test_victim_json_takes_the_vits_settings_and_refuses_others():
    base = {"arch": "vit", "image_shape": [3, 32, 32], "num_classes": 10, "mean": [0.5] * 3, "std": [0.2] * 3,
            "n_images": 20, "training": {"epochs": 1, "batch_size": 20, "lr": 0.01, "loss": "cross_entropy"}}
    meta = VictimMeta.model_validate({**base, "model_kwargs": KW})
    assert meta.kwargs() == KW
    for bad, message in [({**KW, "hidden": [8]}, "not a setting of 'vit'"), ({**KW, "heads": 0}, "heads")]:
        with pytest.raises(ValueError, match=message):
            VictimMeta.model_validate({**base, "model_kwargs": bad})


def test_a_run_with_the_position_term_logs_it(tmp_path):
    victim, _ = vit_victim()
    result = get_attack(attack_config("simudy", sim_epochs=1, steps=2, snapshot_every=1, log_every=1,
                                      position_weight=1.0)).run(victim, ThreatModel.from_victim(victim, ALL), tmp_path)
    rows = result.info["loss_rows"]
    assert len(rows) == 2 and all(float(r["position"]) > 0 for r in rows)
    plain = get_attack(attack_config("simudy", sim_epochs=1, steps=1, snapshot_every=1, log_every=1))
    rows = plain.run(victim, ThreatModel.from_victim(victim, ALL), tmp_path / "b").info["loss_rows"]
    assert "position" not in rows[0]


def test_a_hub_vit_becomes_the_projects_vit_with_a_new_head(tmp_path):
    """The pre-trained ViT of the paper profile (`init: weights`), from a hub-format folder: the
    same features as transformers' own ViT, with only the head left to initialise."""
    from transformers import ViTConfig, ViTModel

    from simudy.models import vit_from_hub

    torch.manual_seed(0)
    config = ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=8, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=32)
    ViTModel(config, add_pooling_layer=False).save_pretrained(tmp_path / "hub")
    hub = ViTModel.from_pretrained(tmp_path / "hub", add_pooling_layer=False).eval()
    model, kwargs = vit_from_hub(str(tmp_path / "hub"), SHAPE, 3)
    assert kwargs == {"patch": 4, "width": 8, "depth": 2, "heads": 2}
    x = torch.randn(2, *SHAPE)
    tokens = torch.cat([model.cls_token.expand(2, -1, -1), model.patch_embed(x).flatten(2).transpose(1, 2)], 1)
    ours = model.norm(model.blocks(tokens + model.pos_embedding))[:, 0]
    assert torch.allclose(ours, hub(pixel_values=x).last_hidden_state[:, 0], atol=1e-5)
    assert model(x).shape == (2, 3)
    with pytest.raises(SimudyError, match="images are \\[3, 8, 8\\]"):
        vit_from_hub(str(tmp_path / "hub"), (3, 8, 8), 3)
