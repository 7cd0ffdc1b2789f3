import pytest
import torch

from simudy.errors import SimudyError
from simudy.models import available, build_model, centre_on, init_first_layer


def test_resnet18_follows_the_pytorch_cifar_layout():
    model = build_model("resnet18", (3, 32, 32), 10)
    names = set(model.state_dict())
    for key in ["conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer1.1.bn2.weight",
                "layer2.0.shortcut.0.weight", "layer2.0.shortcut.1.running_var", "layer4.1.conv2.weight",
                "linear.weight", "linear.bias"]:
        assert key in names
    assert sum(p.numel() for p in model.parameters()) == 11_173_962  # the CIFAR ResNet-18's count
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_width_scales_resnets_and_resnet50_builds():
    small = build_model("resnet18", (3, 32, 32), 10, width=16)
    assert small.conv1.out_channels == 16 and small.linear.in_features == 128
    r50 = build_model("resnet50", (3, 32, 32), 10, width=8)
    assert r50(torch.randn(1, 3, 32, 32)).shape == (1, 10) and "layer1.0.conv3.weight" in r50.state_dict()


def test_mlp_shapes_and_unknown_names():
    mlp = build_model("mlp", (3, 32, 32), 10, hidden=[1000, 1000])
    shapes = [tuple(p.shape) for p in mlp.parameters()]
    assert shapes == [(1000, 3072), (1000,), (1000, 1000), (1000,), (10, 1000), (10,)]
    assert {"mlp", "resnet18", "resnet50"} <= set(available())
    with pytest.raises(SimudyError, match="unknown architecture 'vgg'"):
        build_model("vgg", (3, 32, 32), 10)


def test_haims_mlp_sees_pixels_minus_the_mean_image_and_has_a_first_layer_bias_only():
    mlp = build_model("mlp", (3, 4, 4), 1, hidden=[8, 8], bias="first", centred=True)
    assert [tuple(p.shape) for p in mlp.parameters()] == [(8, 48), (8,), (8, 8), (1, 8)]
    init_first_layer(mlp, 1e-4)
    first = mlp.hidden[0]
    assert 0.5e-4 < first.weight.std() < 2e-4 and first.bias.abs().max() < 1e-3
    pixels = torch.rand(5, 3, 4, 4)
    mean, std = torch.tensor([0.4, 0.5, 0.6]).view(3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(3, 1, 1)
    assert centre_on(mlp, (pixels - mean) / std, std.flatten().tolist())
    centred = (pixels - pixels.mean(0)).flatten(1)
    expected = mlp.out(mlp.act(mlp.hidden[1](mlp.act(first(centred)))))
    torch.testing.assert_close(mlp((pixels - mean) / std), expected)
    assert "centring.shift" in mlp.state_dict() and "centring.shift" not in dict(mlp.named_parameters())
    assert not centre_on(build_model("mlp", (3, 4, 4), 1, hidden=[8]), pixels, [1.0, 1.0, 1.0])
