"""Real training: making θ0 (pre-training or a seeded init), and fine-tuning the victim exactly
as the authors do. Runs on CUDA when present."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from simudy.checkpoints import save_weights
from simudy.config import ExperimentConfig, InitConfig, VictimConfig
from simudy.data import load_dataset
from simudy.devices import pick_device
from simudy.errors import SimudyError
from simudy.io import write_json
from simudy.losses import training_loss
from simudy.models import build_model, init_first_layer, vit_from_hub

log = logging.getLogger(__name__)
INIT_SCHEMA = 1


def make_theta0(cfg: ExperimentConfig, dataset: str | Path, out_dir: str | Path) -> dict:
    """The `pretrain` stage: write `theta0.safetensors` and `init.json` (how θ0 was made)."""
    if cfg.init.init == "weights" and cfg.init.arch == "bert":
        from simudy import text

        return text.make_theta0(cfg, out_dir)
    ds = load_dataset(dataset, split=cfg.init.split)
    torch.manual_seed(cfg.init.seed)
    outputs = cfg.init.outputs or len(ds.class_names)
    kwargs = cfg.init.model_kwargs()
    if cfg.init.init == "weights":
        model, kwargs = _from_weights(cfg.init, ds.image_shape, outputs)
    else:
        model = build_model(cfg.init.arch, ds.image_shape, outputs, **kwargs)
    if cfg.init.first_layer_std is not None:
        init_first_layer(model, cfg.init.first_layer_std)
    info = {"schema": INIT_SCHEMA, "arch": cfg.init.arch, "model_kwargs": kwargs,
            "image_shape": list(ds.image_shape), "num_outputs": outputs, "init": cfg.section("init")}
    if cfg.init.init == "pretrained":
        rows = np.arange(min(cfg.init.limit or len(ds), len(ds)))
        x, y = ds.normalised(rows), torch.from_numpy(ds.labels[rows])
        info["pretrain_accuracy"] = pretrain(model, x, y, cfg.init)
        info["pretrain_images"] = {"split": cfg.init.split, "count": len(rows)}
        if cfg.init.settle_epochs:
            info["settle_loss"] = settle(model, x, y, cfg.init)
    out_dir = Path(out_dir)
    save_weights(out_dir / "theta0.safetensors", model.state_dict())
    write_json(out_dir / "init.json", info)
    return info


def _from_weights(init: InitConfig, image_shape, outputs: int) -> tuple[nn.Module, dict]:
    """`init: weights` for an image model: a ViT from the hub, with a seeded new head."""
    if init.arch != "vit" or not init.weights:
        raise SimudyError(f"init: weights takes a ViT or a BERT with init.weights set (got arch {init.arch!r}, "
                          f"weights {init.weights!r})")
    return vit_from_hub(init.weights, image_shape, outputs)


def pretrain(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: InitConfig) -> float:
    """Ordinary training in train mode (BatchNorm statistics are learnt here); returns the
    final training accuracy. Seeded: the same config gives the same θ0 on the same device."""
    device = pick_device()
    model.to(device).train()
    x, y = x.to(device), y.to(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    steps_per_epoch = -(-len(x) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)
    acc = 0.0
    for epoch in range(cfg.epochs):
        loss, acc = _epoch(model, x, y, opt, cfg.batch_size, cfg.augment, gen, sched)
        log.info("pretrain epoch %d/%d loss %.4f train acc %.3f", epoch + 1, cfg.epochs, loss, acc)
    model.eval().cpu()
    return acc


def settle(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: InitConfig) -> float:
    """Continue θ0 with the victims' optimiser, plain SGD in eval mode, on the pre-training
    images (shuffled and augmented as in pre-training); returns the last epoch's mean loss."""
    device = pick_device()
    model.to(device).eval()
    x, y = x.to(device), y.to(device)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.settle_lr)
    loss = float("nan")
    for epoch in range(cfg.settle_epochs):
        loss, acc = _epoch(model, x, y, opt, cfg.settle_batch_size, cfg.augment, gen)
        log.info("settle epoch %d/%d (eval mode, SGD lr %g) loss %.4f train acc %.3f", epoch + 1,
                 cfg.settle_epochs, cfg.settle_lr, loss, acc)
    model.cpu()
    return loss


def _epoch(model, x, y, opt, batch_size: int, augment: bool, gen: torch.Generator, sched=None) -> tuple[float, float]:
    """One shuffled pass over (x, y); returns the mean loss and the accuracy."""
    perm = torch.randperm(len(x), generator=gen)
    total, correct = torch.zeros((), device=x.device), torch.zeros((), device=x.device)
    for start in range(0, len(x), batch_size):
        idx = perm[start : start + batch_size]
        xb = _augment(x[idx], gen) if augment else x[idx]
        out = model(xb)
        loss = F.cross_entropy(out, y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        total += loss.detach() * len(idx)  # summed on the device: no synchronisation per batch
        correct += (out.argmax(1) == y[idx]).sum()
    return total.item() / len(x), correct.item() / len(x)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random crop from a zero-padded image and horizontal flip (the usual CIFAR recipe)."""
    n, _, h, w = x.shape
    pad = max(1, h // 8)
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).tolist()
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).tolist()
    crops = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
    flip = (torch.rand(n, generator=gen) < 0.5).to(x.device)
    return torch.where(flip.view(-1, 1, 1, 1), crops.flip(-1), crops)


def finetune(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: VictimConfig) -> list[float]:
    """The authors' victim protocol: eval mode throughout (BatchNorm is a fixed affine map),
    plain SGD (no momentum, no weight decay), shuffle off, the mean loss per batch; optionally
    stopped once an epoch's mean loss falls below `stop_loss` ("to convergence").
    Returns the mean loss of each epoch; the model is left on the CPU."""
    device = pick_device()
    model.to(device).eval()
    x, y = x.to(device), y.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.0, weight_decay=0.0)
    losses = []
    for epoch in range(cfg.epochs):
        total = 0.0
        for start in range(0, len(x), cfg.batch_size):
            xb, yb = x[start : start + cfg.batch_size], y[start : start + cfg.batch_size]
            loss = training_loss(cfg.loss, model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(xb)
        losses.append(total / len(x))
        if (epoch + 1) % max(1, cfg.epochs // 20) == 0 or epoch < 20:
            log.info("victim epoch %d/%d loss %.6f", epoch + 1, cfg.epochs, losses[-1])
        if cfg.stop_loss is not None and losses[-1] < cfg.stop_loss:
            log.info("victim converged after %d epochs: loss %.3g < %g", epoch + 1, losses[-1], cfg.stop_loss)
            break
    model.cpu()
    return losses
