"""Pair reconstructions with training images by SSIM, and score them.

Two protocols, both reported and labelled:

* `paper`: the authors' (Loo et al.'s) evaluation, so our numbers compare with the paper's:
  SSIM from scikit-image on the normalised, unclipped tensors, channels last, with
  `data_range` = the training image's max − min; greedy one-to-one matching (repeatedly take
  the best remaining pair); the mean over training images.
* `pixel`: images de-normalised and clipped to [0, 1]; SSIM with data_range 1 and PSNR in dB.

Optimal (Hungarian) matching on the paper SSIM is reported beside the greedy one.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.optimize import linear_sum_assignment
from skimage.metrics import structural_similarity

from simudy.checkpoints import load_weights
from simudy.data import Dataset, load_dataset
from simudy.errors import SimudyError
from simudy.io import atomic_path, write_json

SSIM_WINDOW = 7  # scikit-image's default window: the smallest image SSIM is defined on


def channels_last(x) -> np.ndarray:
    """[N, C, H, W] tensor or array -> float64 [N, H, W, C] array."""
    arr = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    return np.ascontiguousarray(arr.transpose(0, 2, 3, 1), dtype=np.float64)


def to_pixels(x_norm: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Channels-last normalised images -> [0, 1] pixels."""
    return np.clip(x_norm * std + mean, 0.0, 1.0)


def ssim_matrix(train: np.ndarray, recon: np.ndarray, data_range: np.ndarray) -> np.ndarray:
    """S[i, j] = SSIM(train[i], recon[j]) with train image i's data range."""
    s = np.empty((len(train), len(recon)))
    for i, t in enumerate(train):
        for j, r in enumerate(recon):
            s[i, j] = structural_similarity(t, r, data_range=data_range[i], channel_axis=-1)
    return s


def paper_ssim_matrix(train: np.ndarray, recon: np.ndarray) -> np.ndarray:
    """The paper's protocol: SSIM in normalised space, each training image's own value range."""
    return ssim_matrix(train, recon, train.max(axis=(1, 2, 3)) - train.min(axis=(1, 2, 3)))


def greedy_match(score: np.ndarray) -> list[tuple[int, int]]:
    """Repeatedly take the best remaining (train, reconstruction) pair."""
    score = score.astype(float).copy()
    pairs = []
    for _ in range(min(score.shape)):
        i, j = np.unravel_index(np.argmax(score), score.shape)
        pairs.append((int(i), int(j)))
        score[i, :] = -np.inf
        score[:, j] = -np.inf
    return sorted(pairs)


def hungarian_match(score: np.ndarray) -> list[tuple[int, int]]:
    rows, cols = linear_sum_assignment(score, maximize=True)
    return sorted(zip(rows.tolist(), cols.tolist()))


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 1.0) -> float:
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


def evaluate(train_norm, recon_norm, mean, std) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """Score reconstructions against the training images (both [N, C, H, W], normalised): the
    metrics, the pairs, and a row per reconstruction (`dummy_table`)."""
    train, recon = channels_last(train_norm), channels_last(recon_norm)
    if not np.isfinite(recon).all():
        raise SimudyError("reconstructions contain NaN or infinite values")
    if train.shape[1:] != recon.shape[1:]:
        raise SimudyError(f"image shapes differ: training {train.shape[1:]} vs reconstructions {recon.shape[1:]}")
    mean, std = np.asarray(mean, float), np.asarray(std, float)
    s_paper = paper_ssim_matrix(train, recon)
    train_px, recon_px = to_pixels(train, mean, std), to_pixels(recon, mean, std)
    s_pixel = ssim_matrix(train_px, recon_px, np.ones(len(train)))

    greedy = greedy_match(s_paper)
    rows = [{
        "train": i,
        "recon": j,
        "ssim": s_paper[i, j],
        "ssim_pixel": s_pixel[i, j],
        "psnr_pixel": psnr(train_px[i], recon_px[j]),
        "psnr_norm": psnr(train[i], recon[j]),  # the authors' MSE-based PSNR, max 1, normalised space
    } for i, j in greedy]
    pairs = pd.DataFrame(rows).sort_values("ssim", ascending=False, ignore_index=True)
    hung = hungarian_match(s_paper)
    pixel_greedy = greedy_match(s_pixel)
    metrics = {
        "ssim": float(pairs["ssim"].sum() / len(train)),
        "ssim_hungarian": float(sum(s_paper[i, j] for i, j in hung) / len(train)),
        "ssim_pixel": float(sum(s_pixel[i, j] for i, j in pixel_greedy) / len(train)),
        "psnr_pixel": float(pairs["psnr_pixel"].mean()),
        "psnr_norm": float(pairs["psnr_norm"].mean()),
        "frac_ssim_ge_0.4": float((pairs["ssim"] >= 0.4).sum() / len(train)),
        "ssim_matched": float(pairs["ssim"].mean()),  # over the pairs only: differs where there are fewer dummies
        "n_train": len(train),
        "n_recon": len(recon),
        "n_pairs": len(pairs),
    }
    dummies = dummy_table(pairs, s_paper)
    unmatched = dummies.loc[~dummies["matched"], "nearest_ssim"]
    if len(unmatched):  # second copies of training images score high here, noise low
        metrics["ssim_unmatched_nearest"] = float(unmatched.mean())
    return metrics, pairs, dummies


def dummy_table(pairs: pd.DataFrame, s_paper: np.ndarray) -> pd.DataFrame:
    """One row per reconstruction: the training image it is paired with (none for the extra
    dummies of an oversized set), and the training image it resembles most, paired or not."""
    table = pd.DataFrame({"recon": range(s_paper.shape[1])})
    table = table.merge(pairs[["recon", "train", "ssim"]], on="recon", how="left")
    table.insert(1, "matched", table["train"].notna())
    table["train"] = table["train"].astype("Int64")
    table["nearest_train"] = s_paper.argmax(axis=0)
    table["nearest_ssim"] = s_paper.max(axis=0)
    return table


def contribution_summary(dummies: pd.DataFrame) -> dict:
    """Sec. 4.5: the contribution (total-gradient norm) of matched and unmatched dummies."""
    out = {}
    for group, rows in (("matched", dummies[dummies["matched"]]), ("unmatched", dummies[~dummies["matched"]])):
        values = rows["contribution"]
        if len(values):
            out |= {f"contribution_{group}_{stat}": float(getattr(values, stat)()) for stat in ("mean", "min", "max")}
    if "contribution_unmatched_mean" in out:
        out["contribution_ratio"] = out["contribution_matched_mean"] / out["contribution_unmatched_mean"]
    return out


def pair_files(victim_dir: str | Path, reconstruct_dir: str | Path, out_dir: str | Path) -> dict:
    """The pair-by-SSIM stage: write `metrics.json` (DVC metrics), `pairs.csv` and
    `dummies.csv` (every reconstruction, paired or not). There may be more or fewer
    reconstructions than training images."""
    truth_path = Path(victim_dir) / "truth.npz"
    truth = load_dataset(truth_path)
    recon_path = Path(reconstruct_dir) / "reconstruction.safetensors"
    recon, contribution = read_reconstruction(recon_path, with_contribution=True)
    if tuple(recon.shape[1:]) != tuple(truth.image_shape):
        raise SimudyError(f"{recon_path}: images of shape {tuple(recon.shape[1:])}, but the training images in "
                          f"{truth_path} are {truth.image_shape}")
    metrics, pairs, dummies = evaluate(truth.normalised(), recon, truth.mean, truth.std)
    if contribution is not None:
        dummies["contribution"] = contribution.double().numpy()
        metrics |= contribution_summary(dummies)
    pairs.insert(1, "source_id", truth.source_ids[pairs["train"]])
    pairs.insert(2, "label", [truth.class_names[i] for i in truth.labels[pairs["train"]]])
    write_pairs(Path(out_dir), metrics, pairs, dummies)
    return metrics


def write_pairs(out_dir: Path, metrics: dict, pairs: pd.DataFrame, dummies: pd.DataFrame) -> None:
    """The pairing stage's outputs: both tables in full before either is moved into place, then
    `metrics.json`, whose presence marks the stage done."""
    with ExitStack() as stack:
        pairs_tmp, dummies_tmp = (stack.enter_context(atomic_path(out_dir / name))
                                  for name in ("pairs.csv", "dummies.csv"))
        pairs.to_csv(pairs_tmp, index=False, float_format="%.6f")
        dummies.to_csv(dummies_tmp, index=False, float_format="%.6f")
    write_json(out_dir / "metrics.json", metrics)


def read_reconstruction(path: Path, with_contribution: bool = False):
    """The images of a reconstruction file: a float [N, C, H, W] tensor, N ≥ 1, all finite;
    with `with_contribution`, also its per-image `contribution` [N] (None where it has none)."""
    state = load_weights(path)
    if "images" not in state:
        raise SimudyError(f"{path}: holds no 'images' tensor (it has {sorted(state)[:5]})")
    images = state["images"]
    if not images.is_floating_point() or images.ndim != 4 or len(images) == 0:
        raise SimudyError(f"{path}: 'images' must be a non-empty float tensor [N, C, H, W], "
                          f"got {str(images.dtype).removeprefix('torch.')} {list(images.shape)}")
    if min(images.shape[2:]) < SSIM_WINDOW:
        raise SimudyError(f"{path}: images of {list(images.shape[2:])} pixels; SSIM needs at least "
                          f"{SSIM_WINDOW}×{SSIM_WINDOW}")
    if not with_contribution:
        return images
    contribution = state.get("contribution")
    if contribution is not None and (not contribution.is_floating_point() or contribution.shape != images.shape[:1]
                                     or not (torch.isfinite(contribution) & (contribution >= 0)).all()):
        raise SimudyError(f"{path}: 'contribution' must hold one finite, non-negative value per image "
                          f"({len(images)}), got {str(contribution.dtype).removeprefix('torch.')} "
                          f"{list(contribution.shape)}")
    return images, contribution


def progress_monitor(truth: Dataset) -> Callable[[torch.Tensor], dict[str, float]]:
    """Mean SSIM (paper protocol) of reconstructions against the training images `truth`: a
    progress readout for logs and curves."""
    train = channels_last(truth.normalised())

    def score(images: torch.Tensor) -> dict[str, float]:
        if not torch.isfinite(images).all():
            return {"ssim": float("nan")}
        s = paper_ssim_matrix(train, channels_last(images))
        return {"ssim": float(sum(s[i, j] for i, j in greedy_match(s)) / len(train))}

    return score
