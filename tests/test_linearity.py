"""M_lin, the linearity of training dynamics (App. A, Tab. 1): 1 for a model whose gradients
never turn, the running-sum identity against all pairs, bad settings refused, and the smoke
profile through the CLI."""

import itertools
import json

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml

from simudy import linearity
from simudy.config import VictimConfig, load_registry, read_yaml
from simudy.errors import SimudyError
from simudy.models import build_model
from tests.conftest import ROOT, run_cli

REGISTRY = ROOT / "params/experiments.yaml"


@pytest.fixture(autouse=True)
def _one_thread():
    """One thread: the per-image loop of these tiny models only waits on a second one, and on a
    busy machine an oversubscribed one makes seconds minutes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _recipe(epochs=5, lr=0.5, batch_size=4) -> VictimConfig:
    return VictimConfig(per_class=1, offset=0, epochs=epochs, batch_size=batch_size, lr=lr)


def _data(n=7, classes=3, shape=(1, 4, 4)):
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, *shape, generator=gen), torch.arange(n) % classes


def test_a_linear_two_class_model_has_m_lin_one():
    """Softmax regression on two classes: image i's gradient is (1 − p_yi)·(e_other − e_yi) ⊗ [x_i, 1],
    one direction however far training moves the parameters."""
    x, y = _data(classes=2)
    torch.manual_seed(0)
    model = build_model("mlp", (1, 4, 4), 2, hidden=[])
    states, losses = linearity.trajectory(model, x, y, _recipe(epochs=6, lr=1.0))
    assert losses[-1] < 0.5 * losses[0]  # it did train
    assert (states[-1] - states[0]).norm() > 0.5
    cosines = linearity.unit_gradient_cosines(model, states, x, y, chunk=3)
    torch.testing.assert_close(cosines, torch.ones(len(x), dtype=torch.float64), atol=1e-5, rtol=0)


def test_a_nonlinear_network_turns_and_a_standing_one_does_not():
    x, y = _data()
    torch.manual_seed(0)
    model = build_model("mlp", (1, 4, 4), 3, hidden=[8, 8])
    theta0 = {k: v.clone() for k, v in model.state_dict().items()}
    states, _ = linearity.trajectory(model, x, y, _recipe(epochs=8, lr=2.0))
    moving = linearity.unit_gradient_cosines(model, states, x, y)
    assert moving.mean() < 0.95 and (moving <= 1 + 1e-6).all() and (moving >= -1 - 1e-6).all()
    model.load_state_dict(theta0)
    states, _ = linearity.trajectory(model, x, y, _recipe(epochs=4, lr=1e-9))
    torch.testing.assert_close(linearity.unit_gradient_cosines(model, states, x, y),
                               torch.ones(len(x), dtype=torch.float64), atol=1e-5, rtol=0)


def _brute_force(model, states, x, y) -> torch.Tensor:
    """Eq. 6 as written, every gradient kept: per image, the mean cosine over unordered pairs."""
    params = list(model.parameters())
    grads = torch.zeros(len(x), len(states), sum(p.numel() for p in params), dtype=torch.float64)
    for t, state in enumerate(states):
        torch.nn.utils.vector_to_parameters(state.clone(), params)
        for i in range(len(x)):
            g = torch.autograd.grad(F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), params)
            grads[i, t] = torch.cat([a.reshape(-1) for a in g]).double()
    pairs = list(itertools.combinations(range(len(states)), 2))
    unit = grads / grads.norm(dim=2, keepdim=True)  # not F.cosine_similarity: it clamps ‖a‖‖b‖ at 1e-8
    return torch.stack([torch.stack([unit[i, a] @ unit[i, b] for a, b in pairs]).mean() for i in range(len(x))])


def test_running_sums_equal_all_pairs_on_a_small_mlp():
    x, y = _data()
    torch.manual_seed(1)
    model = build_model("mlp", (1, 4, 4), 3, hidden=[6, 5])
    states, losses = linearity.trajectory(model, x, y, _recipe(epochs=6, lr=0.8, batch_size=3))
    assert losses[-1] < losses[0]
    fast = linearity.unit_gradient_cosines(model, states, x, y, chunk=3)  # 7 images: chunks of 3, 3, 1
    slow = _brute_force(model.eval(), states, x, y)
    assert slow.std() > 0.01  # the images differ: the comparison is not of constants
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)


def test_one_epoch_is_refused():
    x, y = _data()
    model = build_model("mlp", (1, 4, 4), 3, hidden=[4])
    with pytest.raises(SimudyError, match="at least two epochs"):
        linearity.unit_gradient_cosines(model, [torch.zeros(sum(p.numel() for p in model.parameters()))], x, y)


# -- the registry and the CLI ------------------------------------------------------------------


def _registry(tmp_path, edit=None, profile_edit=None) -> str:
    raw = read_yaml(REGISTRY)
    table = raw["linearity"]["tab1"]
    table.update(edit or {})
    table["profiles"].get("smoke", {}).update(profile_edit or {})
    path = tmp_path / "experiments.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    return path


def test_the_registry_resolves_the_profiles():
    reg = load_registry(REGISTRY)
    _, paper = reg.linearity_table("tab1", "paper")
    assert paper.measured() == ["mlp200", "mlp500", "mlp1000", "mlp2000", "mlp4000", "resnet18", "resnet18_pretrained"]
    assert (paper.per_class, paper.epochs, paper.batch_size, paper.lr, paper.init) == (10, 20, 100, 0.01, "random")
    assert paper.networks["mlp1000"].hidden == [1000, 1000] and paper.networks["resnet18"].width == 64
    assert [paper.networks[n].paper for n in paper.measured()] == [0.9134, 0.9165, 0.9306, 0.9396, 0.9535, 0.5988,
                                                                   0.5988]
    # The pre-trained ResNet's θ0: defaults.init with the table's shorter pre-training.
    assert [paper.network_init(n) for n in ("resnet18", "resnet18_pretrained")] == ["random", "pretrained"]
    theta0 = reg.linearity_theta0(paper, "resnet18_pretrained")
    assert (theta0.arch, theta0.width, theta0.split, theta0.limit, theta0.epochs, theta0.settle_epochs) == \
        ("resnet18", 64, "test", 2000, 5, 2)
    name, cpu = reg.linearity_table(None, "cpu")  # the only table
    assert name == "tab1" and cpu.networks["resnet18"].width == 16 and cpu.networks["mlp200"].hidden == [200, 200]
    assert cpu.networks["resnet18_pretrained"].width == 16


@pytest.mark.parametrize("edit, profile_edit, message", [
    ({"epochs": 1}, None, r"yaml: linearity\.tab1\.epochs: Input should be greater than or equal to 2 \(got 1\)"),
    (None, {"run": ["mlp200", "mlp300"]}, r"at profile 'smoke': run must name distinct networks"),
    (None, {"networks": {"mlp200": {"hidden": [16, 0]}}}, r"'smoke': networks\.mlp200\.hidden\.1: .*greater than"),
    (None, {"lr": -0.01}, r"'smoke': lr: Input should be greater than 0"),
    (None, {"widht": 3}, r"'smoke': widht: Extra inputs are not permitted"),
    ({"dataset": "cifar100"}, None, r"linearity 'tab1' uses unknown dataset 'cifar100'"),
    ({"profiles": {"paper": {}}}, None, r"active_profile 'cpu': linearity 'tab1' has no such profile"),
    (None, {"init": "pretrained", "pretrain": {"epochs": -1}}, r"at profile 'smoke': epochs: .*greater than"),
])
def test_bad_settings_name_the_key(tmp_path, edit, profile_edit, message):
    with pytest.raises(SimudyError, match=message):
        load_registry(_registry(tmp_path, edit, profile_edit))


def test_the_cli_refuses_an_unknown_profile_or_architecture(tmp_path, digits_file, capsys):
    out = tmp_path / "out"
    assert run_cli("linearity", "--registry", REGISTRY, "--profile", "nope", "--data", digits_file,
                   "--out-dir", out) == 2
    assert "linearity 'tab1' has no profile 'nope'" in capsys.readouterr().err
    reg = _registry(tmp_path, profile_edit={"networks": {"resnet18": {"arch": "resnet19"}}})
    assert run_cli("linearity", "--registry", reg, "--profile", "smoke", "--data", digits_file,
                   "--out-dir", out) == 2
    err = capsys.readouterr().err
    assert "linearity.tab1.networks.resnet18: unknown architecture 'resnet19'" in err
    assert "mlp200: epoch" not in err and not out.exists()  # refused before anything trained


@pytest.mark.parametrize("profile_edit", [None, {"init": "pretrained", "pretrain": {"limit": 20, "epochs": 1}}],
                         ids=["random", "pretrained"])
def test_the_smoke_profile_runs_end_to_end(tmp_path, digits_file, profile_edit):
    out = tmp_path / "tab1"
    assert run_cli("linearity", "--registry", _registry(tmp_path, profile_edit=profile_edit), "--profile", "smoke",
                   "--data", digits_file, "--out-dir", out) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["mlp200", "resnet18"] and all(-1 <= v <= 1 for v in metrics.values())
    table = pd.read_csv(out / "tab1.csv")
    assert list(table["network"]) == ["mlp200", "resnet18"] and set(table["profile"]) == {"smoke"}
    assert list(table["paper"]) == [0.9134, 0.5988]
    assert table["difference"].tolist() == pytest.approx((table["m_lin"] - table["paper"]).tolist(), abs=1e-5)
    assert list(table["width"].astype(str)) == ["16-16", "4"] and (table["images"] == 10).all()
    text = (out / "tab1.md").read_text()
    assert "Profile `smoke`" in text and "| mlp200" in text and "0.9134" in text
    assert set(table["init"]) == {"pretrained" if profile_edit else "random"}
