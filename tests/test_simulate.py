"""The simulator must replay real training exactly, and be differentiable in the images."""

from functools import partial

import pydantic
import pytest
import torch

from simudy.config import SimulatorConfig, VictimConfig
from simudy.models import build_model, flatten
from simudy.objectives import cosine_distance
from simudy.simulate import TrainingPlan, simulate
from simudy.simulate_reference import simulate_reference
from simudy.train import finetune


def _with_random_bn_stats(model):
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _trained(arch, shape, **kw):
    model = _with_random_bn_stats(build_model(arch, shape, 4, **kw))
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    x, y = torch.randn(10, *shape), torch.arange(10) % 4
    cfg = VictimConfig(per_class=1, offset=0, epochs=3, batch_size=4, lr=0.05)
    finetune(model, x, y, cfg)
    thetaf = {n: p.detach().clone() for n, p in model.named_parameters()}
    return model, theta0, thetaf, x, y, cfg


def test_simulation_of_the_true_data_reproduces_theta_f():
    for arch, shape, kw in [("mlp", (1, 6, 6), {"hidden": [16, 16]}), ("resnet18", (3, 8, 8), {"width": 2})]:
        model, theta0, thetaf, x, y, cfg = _trained(arch, shape, **kw)
        plan = TrainingPlan(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr)
        sim = simulate(model, theta0, x, y, plan, create_graph=False)
        for name in thetaf:
            torch.testing.assert_close(sim.final[name], thetaf[name], rtol=0, atol=1e-6)
        change = flatten([theta0[n] - thetaf[n] for n in theta0])
        assert float(cosine_distance(flatten(sim.grad_sum), change)) < 1e-5
        # A different dataset does not reproduce θf.
        other = simulate(model, theta0, torch.randn_like(x), y, plan, create_graph=False)
        assert float(cosine_distance(flatten(other.grad_sum), change)) > 1e-2


def test_image_gradient_matches_finite_differences():
    torch.manual_seed(1)
    model = build_model("mlp", (1, 3, 3), 3, hidden=[5]).double().eval()
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    target = torch.randn(sum(p.numel() for p in theta0.values()), dtype=torch.float64)
    labels = torch.tensor([0, 1, 2])
    plan = TrainingPlan(epochs=2, batch_size=2, lr=0.3, clip_max_norm=0.5, clip_to_norm=0.2)

    def loss(x):
        sim = simulate(model, theta0, x, labels, plan)
        return cosine_distance(flatten(sim.grad_sum), target)

    x = torch.randn(3, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    assert simulate(model, theta0, x, labels, plan).clipped_steps > 0  # the clipped path is checked too
    assert torch.autograd.gradcheck(loss, (x,), eps=1e-6, atol=1e-5)


def test_simulation_uses_batches_in_order():
    model = build_model("mlp", (1, 2, 2), 2, hidden=[3]).eval()
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    x, y = torch.randn(4, 1, 2, 2), torch.tensor([0, 1, 0, 1])
    plan = TrainingPlan(epochs=1, batch_size=2, lr=0.1)
    a = simulate(model, theta0, x, y, plan, create_graph=False).final
    b = simulate(model, theta0, x.flip(0), y.flip(0), plan, create_graph=False).final
    assert not torch.allclose(a["out.weight"], b["out.weight"])
    # One full batch is order-free: the mean gradient is the same.
    full = TrainingPlan(epochs=1, batch_size=4, lr=0.1)
    c = simulate(model, theta0, x, y, full, create_graph=False).final
    d = simulate(model, theta0, x.flip(0), y.flip(0), full, create_graph=False).final
    torch.testing.assert_close(c["out.weight"], d["out.weight"])


def _image_gradient(sim_fn, model, theta0, x, labels, plan, target):
    x = x.clone().requires_grad_(True)
    sim = sim_fn(model, theta0, x, labels, plan)
    loss = cosine_distance(flatten(sim.grad_sum), target)
    loss.backward()
    return loss.detach(), x.grad, sim.final


@pytest.mark.slow
def test_every_simulator_mode_matches_the_straightforward_implementation():
    """Rematerialisation and channels-last change how, not what: same loss, same image gradient."""
    torch.manual_seed(2)
    model = _with_random_bn_stats(build_model("resnet18", (3, 8, 8), 4, width=2)).double()
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    target = torch.randn(sum(p.numel() for p in theta0.values()), dtype=torch.float64)
    x, labels = torch.randn(6, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 0, 1])
    plan = TrainingPlan(epochs=2, batch_size=4, lr=0.1, clip_max_norm=0.3, clip_to_norm=0.15)
    ref_loss, ref_grad, ref_final = _image_gradient(simulate_reference, model, theta0, x, labels, plan, target)
    assert 0 < simulate_reference(model, theta0, x, labels, plan).clipped_steps < 4  # both branches of clipping
    for options in [SimulatorConfig(), SimulatorConfig(remat=1), SimulatorConfig(remat=3),
                    SimulatorConfig(remat=1, chunk=3), SimulatorConfig(remat=2, chunk=1, channels_last=True),
                    SimulatorConfig(remat=1, vjp="jvp"), SimulatorConfig(remat=3, chunk=3, vjp="jvp")]:
        run = partial(simulate, options=options)
        loss, grad, final = _image_gradient(run, model, theta0, x, labels, plan, target)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-8, atol=1e-12)
        torch.testing.assert_close(final["linear.weight"], ref_final["linear.weight"])


def test_forward_mode_vjp_matches_on_a_binary_logistic_model():
    torch.manual_seed(4)
    model = build_model("mlp", (3, 4, 4), 1, hidden=[8, 8], bias=False).double().eval()
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    target = torch.randn(sum(p.numel() for p in theta0.values()), dtype=torch.float64)
    x, labels = torch.randn(4, 3, 4, 4, dtype=torch.float64), torch.tensor([0, 1, 1, 0])
    plan = TrainingPlan(epochs=3, batch_size=4, lr=0.1, loss="logistic")
    ref_loss, ref_grad, _ = _image_gradient(simulate_reference, model, theta0, x, labels, plan, target)
    run = partial(simulate, options=SimulatorConfig(remat=2, chunk=3, vjp="jvp"))
    loss, grad, _ = _image_gradient(run, model, theta0, x, labels, plan, target)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-8, atol=1e-12)


def test_bf16_simulation_stays_close_to_fp32():
    torch.manual_seed(3)
    model = build_model("mlp", (3, 8, 8), 4, hidden=[32]).eval()
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    target = torch.randn(sum(p.numel() for p in theta0.values()))
    x, labels = torch.randn(8, 3, 8, 8), torch.arange(8) % 4
    plan = TrainingPlan(epochs=2, batch_size=8, lr=0.1)
    _, ref_grad, _ = _image_gradient(simulate_reference, model, theta0, x, labels, plan, target)
    _, grad, _ = _image_gradient(partial(simulate, options=SimulatorConfig(precision="bf16")),
                                 model, theta0, x, labels, plan, target)
    assert float(cosine_distance(grad.flatten(), ref_grad.flatten())) < 0.02


@pytest.mark.parametrize("options", [{"reference": True, "remat": 2}, {"chunk": 4}, {"vjp": "jvp"},
                                     {"remat": 2, "vjp": "jvp", "precision": "bf16"}])
def test_simulator_options_that_cannot_combine_are_rejected(options):
    with pytest.raises(pydantic.ValidationError):
        SimulatorConfig(**options)
