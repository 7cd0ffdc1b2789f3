"""App. A, Tab. 1: how linear a network's training dynamics are, M_lin (Eq. 6).

    M_lin = 2/m · 1/(T(T−1)) · Σ_i Σ_{t1≠t2} cos(g_{i,t1}, g_{i,t2})

where g_{i,t} is the gradient of training image i's loss at epoch t. The paper states that
M_lin lies in [−1, 1], which holds only for the mean over *unordered* pairs of epochs (the sum
over ordered pairs t1 ≠ t2 counts each pair twice): M_lin is the mean over the m images of the
mean pairwise cosine over the T(T−1)/2 pairs of epochs. It never holds all gradients: with
u_t = g_t/‖g_t‖, Σ_{t1≠t2} cos(g_t1, g_t2) = ‖Σ_t u_t‖² − T, so each image keeps a running sum
of its unit gradients over the epochs.

The measurement, as set in the registry's `linearity` section (`tab1`), and its choices (the
paper states only "2-layer MLP of width w and ResNet-18, 100 CIFAR-10 images, lr 0.01, batch
size 100"):

* Networks: "2-layer MLP" is read as two hidden layers of width w, 3072-w-w-10 (the paper's
  Fig. 4 MLP, 3072-1000-1000-10, is the width-1000 row); `hidden: [w]` makes it 3072-w-10.
  ResNet-18 is the CIFAR ResNet-18 of simudy.models at base width 64.
* θ0: every network trained from a seeded random init with the same recipe, as the table says
  (`init: random`). In eval mode a random-init ResNet barely trains (its BatchNorm statistics
  are the init's), so its M_lin is ~1; the paper's ResNet victims fine-tune a pre-trained θ0,
  which a network's `init: pretrained` gives (`resnet18_pretrained`): θ0 pre-trained as
  `defaults.init` says (on the test split), changed by the table's `pretrain`.
* Training: the victims' recipe (simudy.train.finetune): plain SGD at lr 0.01, batch 100, the
  model in eval mode (BatchNorm uses its running statistics), images in dataset order. With
  100 images and batch 100, each epoch is one full-batch step.
* Images: the first 10 of each class of the train split (`per_class: 10`, the victims'
  subset), normalised as everywhere in simudy; m = all of them.
* T = 20 epochs (the paper's victims train 20 epochs); g_{i,t} is the gradient of image i's
  cross-entropy loss with respect to all trainable parameters at the parameters epoch t starts
  from (θ_0 … θ_{T−1}), in eval mode. A zero gradient counts as cosine 0 with every other.

The T parameter vectors of the trajectory are held in memory (T × 4 bytes per parameter: 2.3 GB
for the width-4000 MLP's 28 M parameters), and the images' running sums `chunk` images at a
time (1.1 GB for 10 images of that MLP). Per-image gradients are taken one image at a time:
on two CPU cores this was 3-10x faster than torch.func's vmap(grad) for every network here.
Where the cores are shared with other jobs, OMP_NUM_THREADS=1 is several times faster still:
the loop's many small operations suffer most from oversubscribed threads.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from simudy import train
from simudy.config import LinearityConfig, Registry, VictimConfig
from simudy.data import load_dataset, select_subset
from simudy.devices import pick_device
from simudy.errors import SimudyError
from simudy.io import atomic_path, write_json
from simudy.losses import per_sample_loss
from simudy.models import build_model, init_first_layer

log = logging.getLogger(__name__)


# -- the measurement --------------------------------------------------------------------------


def trajectory(model: nn.Module, x: torch.Tensor, y: torch.Tensor, recipe: VictimConfig,
               label: str = "") -> tuple[list[torch.Tensor], list[float]]:
    """Train `model` with the victims' recipe for `recipe.epochs` epochs; return the parameter
    vector each epoch starts from (θ_0 … θ_{T−1}, on the CPU) and each epoch's mean loss. Each
    epoch is one call of `train.finetune`: plain SGD keeps no state between epochs, so the
    epochs give exactly what one call for all of them gives."""
    states, losses = [], []
    one_epoch = recipe.model_copy(update={"epochs": 1, "stop_loss": None})
    for epoch in range(recipe.epochs):
        trained = [p for p in model.parameters() if p.requires_grad]  # as unit_gradient_cosines reads them
        states.append(nn.utils.parameters_to_vector(trained).detach().cpu().clone())
        with _quiet(train.log):
            losses += train.finetune(model, x, y, one_epoch)
        log.info("%sepoch %d/%d loss %.4f", label, epoch + 1, recipe.epochs, losses[-1])
    return states, losses


def unit_gradient_cosines(model: nn.Module, states: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                          chunk: int = 10, loss: str = "cross_entropy", label: str = "") -> torch.Tensor:
    """For each image, the mean cosine between its loss gradients at the T parameter vectors
    `states`, over the T(T−1)/2 pairs: (‖Σ_t u_t‖² − Σ_t ‖u_t‖²) / (T(T−1)) with u_t its unit
    gradient at state t. The model is evaluated in eval mode; returns float64 [m]."""
    if len(states) < 2:
        raise SimudyError(f"M_lin needs the gradients of at least two epochs, got {len(states)}")
    device = pick_device()
    model.to(device).eval()
    params = [p for p in model.parameters() if p.requires_grad]
    sizes = [p.numel() for p in params]
    total, n_states = sum(sizes), len(states)
    out, zeros = [], 0
    for start in range(0, len(x), chunk):
        xb, yb = x[start : start + chunk].to(device), y[start : start + chunk].to(device)
        sums = torch.zeros(len(xb), total, device=device)  # Σ_t u_t per image
        counts = torch.zeros(len(xb), dtype=torch.float64)  # Σ_t ‖u_t‖²: the nonzero gradients
        for state in states:
            _load(params, state.to(device), sizes)
            for j in range(len(xb)):
                value = per_sample_loss(loss, model(xb[j : j + 1]), yb[j : j + 1]).sum()
                grads = torch.autograd.grad(value, params)
                norm = math.sqrt(sum(float(torch.linalg.vector_norm(g)) ** 2 for g in grads))
                if norm == 0.0:
                    zeros += 1
                    continue
                for part, g in zip(sums[j].split(sizes), grads):
                    part.add_(g.reshape(-1), alpha=1.0 / norm)
                counts[j] += 1.0
        squares = torch.stack([_square(s) for s in sums])
        out.append((squares - counts) / (n_states * (n_states - 1)))
        log.info("%sgradients of images %d/%d at %d states", label, start + len(xb), len(x), n_states)
    if zeros:
        log.warning("%s%d zero gradients (counted as cosine 0 with every other)", label, zeros)
    model.cpu()
    return torch.cat(out)


def _square(v: torch.Tensor) -> torch.Tensor:
    v = v.double()
    return torch.dot(v, v).cpu()


def _load(params: list[nn.Parameter], state: torch.Tensor, sizes: list[int]) -> None:
    with torch.no_grad():
        for p, v in zip(params, state.split(sizes)):
            p.copy_(v.view_as(p))


@contextmanager
def _quiet(logger: logging.Logger) -> Iterator[None]:
    """`logger` below warnings: finetune's "epoch 1/1" lines would repeat the trajectory's own."""
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


# -- the table --------------------------------------------------------------------------------


def run_table(reg: Registry, name: str | None, profile: str, data: str | Path, out_dir: str | Path) -> pd.DataFrame:
    """The `linearity` stage: every network of the table at `profile`, then `<name>.md`,
    `<name>.csv` and `metrics.json` ({network: M_lin}) in `out_dir`."""
    name, cfg = reg.linearity_table(name, profile)
    ds = load_dataset(data, split="train")
    rows = select_subset(ds.labels, cfg.per_class, cfg.offset, len(ds.class_names))
    x, y = ds.normalised(rows), torch.from_numpy(ds.labels[rows])
    classes = len(ds.class_names)
    _check_networks(reg, name, cfg, ds.image_shape, classes)
    recipe = VictimConfig(per_class=cfg.per_class, offset=cfg.offset, epochs=cfg.epochs, batch_size=cfg.batch_size,
                          lr=cfg.lr)
    log.info("%s at profile %s: %d networks, %d images (%d per class), %d epochs, batch %d, lr %g", name, profile,
             len(cfg.measured()), len(rows), cfg.per_class, cfg.epochs, cfg.batch_size, cfg.lr)
    results = []
    for net in cfg.measured():
        results.append(_measure(reg, cfg, net, data, x, y, ds.image_shape, classes, recipe))
    table = pd.DataFrame(results)
    table.insert(0, "profile", profile)
    _write(Path(out_dir), name, cfg, profile, table)
    return table


def _measure(reg: Registry, cfg: LinearityConfig, net: str, data, x, y, image_shape, classes: int,
             recipe: VictimConfig) -> dict:
    started = time.perf_counter()
    model = _theta0(reg, cfg, net, data, image_shape, classes)
    spec = cfg.networks[net]
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    held = 4 * count * (cfg.epochs + min(cfg.chunk, len(x))) / 2**30
    label = f"{net}: "
    log.info("%s%s %s, %s parameters, %s init; holding %.2f GB of trajectory and gradient sums", label, spec.arch,
             spec.model_kwargs(), f"{count:,}", cfg.network_init(net), held)
    states, losses = trajectory(model, x, y, recipe, label)
    per_image = unit_gradient_cosines(model, states, x, y, cfg.chunk, label=label)
    m_lin = float(per_image.mean())
    seconds = time.perf_counter() - started
    paper = spec.paper
    log.info("%sM_lin %.4f (paper %s) in %.1f s", label, m_lin, "—" if paper is None else f"{paper:.4f}", seconds)
    return {"network": net, "arch": spec.arch, "width": _width(spec.model_kwargs()), "parameters": count,
            "init": cfg.network_init(net), "images": len(x), "epochs": cfg.epochs, "m_lin": m_lin,
            "image_std": float(per_image.std()) if len(per_image) > 1 else 0.0,
            "paper": np.nan if paper is None else paper, "difference": np.nan if paper is None else m_lin - paper,
            "first_loss": losses[0], "final_loss": losses[-1], "seconds": seconds}


def _theta0(reg: Registry, cfg: LinearityConfig, net: str, data, image_shape, classes: int) -> nn.Module:
    """The network at θ0: a seeded random init, or pre-trained as the registry says."""
    torch.manual_seed(cfg.seed)
    if cfg.network_init(net) == "random":
        return build_model(cfg.networks[net].arch, image_shape, classes, **cfg.networks[net].model_kwargs()).eval()
    init = reg.linearity_theta0(cfg, net)
    model = build_model(init.arch, image_shape, init.outputs or classes, **init.model_kwargs())
    if init.first_layer_std is not None:
        init_first_layer(model, init.first_layer_std)
    ds = load_dataset(data, split=init.split)
    rows = np.arange(min(init.limit or len(ds), len(ds)))
    xp, yp = ds.normalised(rows), torch.from_numpy(ds.labels[rows])
    log.info("%s: pre-training θ0 on %d %s images for %d epochs", net, len(rows), init.split, init.epochs)
    train.pretrain(model, xp, yp, init)
    if init.settle_epochs:
        train.settle(model, xp, yp, init)
    return model.eval()


def _check_networks(reg: Registry, name: str, cfg: LinearityConfig, image_shape, classes: int) -> None:
    """Every network builds (on the meta device, which allocates nothing) before any trains."""
    for net in cfg.measured():
        spec = cfg.networks[net]
        try:
            with torch.device("meta"):
                build_model(spec.arch, image_shape, classes, **spec.model_kwargs())
        except (SimudyError, TypeError) as err:
            raise SimudyError(f"{reg._source}: linearity.{name}.networks.{net}: {err}") from None


def _width(kwargs: dict) -> str:
    if "hidden" in kwargs:
        return "-".join(map(str, kwargs["hidden"])) or "none"
    return str(kwargs.get("width", "default"))


def _write(out_dir: Path, name: str, cfg: LinearityConfig, profile: str, table: pd.DataFrame) -> None:
    with atomic_path(out_dir / f"{name}.csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    shown = pd.DataFrame({
        "network": table["network"], "width": table["width"], "parameters": table["parameters"].map("{:,}".format),
        "M_lin (ours)": table["m_lin"].map("{:.4f}".format),
        "paper": table["paper"].map(lambda v: "" if pd.isna(v) else f"{v:.4f}"),
        "difference": table["difference"].map(lambda v: "" if pd.isna(v) else f"{v:+.4f}"),
        "loss (first → last epoch)": [f"{a:.3f} → {b:.3f}" for a, b in zip(table["first_loss"], table["final_loss"])],
        "seconds": table["seconds"].map("{:.0f}".format),
    })
    images = int(table["images"].iloc[0]) if len(table) else 0
    with atomic_path(out_dir / f"{name}.md") as tmp:
        tmp.write_text(
            f"# {cfg.title}\n\nProfile `{profile}`: {images} training images ({cfg.per_class} per class), "
            f"{cfg.epochs} epochs, batch {cfg.batch_size}, lr {cfg.lr:g}, plain SGD in eval mode from a "
            f"{' or '.join(sorted(set(table['init'])))} init (seed {cfg.seed}). M_lin (Eq. 6): the mean over "
            "images of the mean cosine between an image's loss gradients at the parameters each epoch starts "
            "from, over all pairs of epochs. "
            "Paper: App. A, Tab. 1 (100 images, lr 0.01, batch 100); a profile other than `paper` is not a "
            "reproduction of its values.\n\n" + shown.to_markdown(index=False, disable_numparse=True) + "\n")
    write_json(out_dir / "metrics.json", {row.network: round(row.m_lin, 6) for row in table.itertuples()})
