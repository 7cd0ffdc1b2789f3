"""Figures and tables: the paper's Fig. 1 layout, the loss curve, and results table rows."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from simudy.checkpoints import load_weights  # noqa: E402
from simudy.config import ExperimentConfig  # noqa: E402
from simudy.data import load_dataset  # noqa: E402
from simudy.io import atomic_path, read_json  # noqa: E402
from simudy.pairing import channels_last, to_pixels  # noqa: E402

ROW_COLUMNS = ["experiment", "profile", "attack", "model", "n_images", "steps", "ssim", "paper_ssim",
               "paper_ref", "ssim_hungarian", "ssim_pixel", "psnr_pixel", "seconds", "seconds_per_step"]


def make_report(cfg: ExperimentConfig, victim_dir, reconstruct_dir, evaluate_dir, out_dir) -> pd.DataFrame:
    """The report stage: `figure.png` (Fig. 1 layout), `loss.png` and the table row `row.csv`."""
    rec_dir, ev_dir, out_dir = Path(reconstruct_dir), Path(evaluate_dir), Path(out_dir)
    truth = load_dataset(Path(victim_dir) / "truth.npz")
    recon = load_weights(rec_dir / "reconstruction.safetensors")["images"]
    run, metrics = read_json(rec_dir / "run.json"), read_json(ev_dir / "metrics.json")
    pixels = lambda x: to_pixels(channels_last(x), truth.mean, truth.std)  # noqa: E731
    reconstruction_figure(out_dir / "figure.png", pixels(recon), pixels(truth.normalised()),
                          pd.read_csv(ev_dir / "pairs.csv"), _title(cfg, run, metrics),
                          cfg.evaluate.show, cfg.evaluate.columns)
    loss_figure(out_dir / "loss.png", pd.read_csv(rec_dir / "loss.csv"), f"{cfg.title} [{cfg.profile}]")
    row = pd.DataFrame([{
        "experiment": cfg.name, "profile": cfg.profile, "attack": run["attack"], "model": cfg.init.arch,
        "n_images": metrics["n_train"], "steps": run["steps"], "ssim": metrics["ssim"],
        "paper_ssim": cfg.evaluate.paper_ssim, "paper_ref": cfg.evaluate.paper_ref,
        "ssim_hungarian": metrics["ssim_hungarian"], "ssim_pixel": metrics["ssim_pixel"],
        "psnr_pixel": metrics["psnr_pixel"], "seconds": run["seconds"], "seconds_per_step": run["seconds_per_step"],
    }])[ROW_COLUMNS]
    with atomic_path(out_dir / "row.csv") as tmp:
        row.to_csv(tmp, index=False)
    return row


def _title(cfg: ExperimentConfig, run: dict, metrics: dict) -> str:
    paper = ""
    if cfg.evaluate.paper_ssim is not None:
        scale = "" if cfg.profile == "paper" else " at paper scale"
        paper = f"; the paper reports {cfg.evaluate.paper_ssim:.4f}{scale}"
    return (f"{cfg.title} [{run['attack']}, {cfg.profile} profile]\n"
            f"mean SSIM {metrics['ssim']:.4f} over {metrics['n_train']} images{paper}")


def reconstruction_figure(path, recon_px: np.ndarray, train_px: np.ndarray, pairs: pd.DataFrame,
                          title: str, show: int, columns: int) -> None:
    """Reconstructions (rows 1, 3, ...) above their matched training images (rows 2, 4, ...),
    best SSIM first, as in the paper's Fig. 1. Images are channels-last [0, 1] pixels."""
    top = pairs.sort_values("ssim", ascending=False).head(show)
    blocks = -(-len(top) // columns)
    # Each block is a row of reconstructions over a row of originals, then a thin spacer.
    ratios = ([1, 1, 0.25] * blocks)[:-1]
    fig, axes = plt.subplots(len(ratios), columns, figsize=(1.1 * columns, 2.5 * blocks + 0.6), squeeze=False,
                             gridspec_kw={"height_ratios": ratios, "hspace": 0.12, "wspace": 0.05})
    for ax in axes.flat:
        ax.axis("off")
    for k, row in enumerate(top.itertuples()):
        b, c = divmod(k, columns)
        _show(axes[3 * b, c], recon_px[row.recon])
        axes[3 * b, c].set_title(f"{row.ssim:.2f}", fontsize=7, pad=2)
        _show(axes[3 * b + 1, c], train_px[row.train])
    fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.55 / fig.get_figheight())
    _save(fig, path)


def _show(ax, img: np.ndarray) -> None:
    if img.shape[-1] == 1:
        ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(img, interpolation="nearest")


def loss_figure(path, loss: pd.DataFrame, title: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(loss["step"], loss["loss"], lw=0.8, label="loss")
    ax.plot(loss["step"], loss["distance"], lw=0.8, alpha=0.7, label="parameter-change distance")
    ax.set_yscale("log")
    ax.set_xlabel("outer step")
    ax.set_ylabel("reconstruction loss")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def _save(fig, path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=150, format=Path(path).suffix.lstrip("."))
    plt.close(fig)


def write_table(rows: list[pd.DataFrame], path) -> pd.DataFrame:
    """Collect table rows into one markdown table. The profile column says which scale produced
    each number: a `cpu` row is never a reproduction of the paper's value."""
    table = pd.concat(rows, ignore_index=True)[ROW_COLUMNS].sort_values(["experiment", "profile", "attack"])
    cells = table.astype(object).where(table.notna(), None)  # blank, not "nan", where the paper has no value
    text = "# Results\n\n" + cells.to_markdown(index=False, floatfmt=".4f", missingval="") + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return table
