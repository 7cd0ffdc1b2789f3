import numpy as np
import pytest
import torch

from simudy.errors import SimudyError
from simudy.pairing import evaluate, greedy_match, hungarian_match


def _images(n=6, c=3, size=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, size).view(1, 1, 1, -1)
    base = torch.rand(n, c, 1, 1, generator=g) + ramp * torch.rand(n, c, 1, 1, generator=g)
    return (base + 0.3 * torch.rand(n, c, size, size, generator=g) - 0.5) / 0.25


def test_pairing_recovers_a_known_permutation():
    train = _images()
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    recon = train[perm] + 0.01 * torch.randn_like(train)
    metrics, pairs, _ = evaluate(train, recon, mean=[0.5] * 3, std=[0.25] * 3)
    found = dict(zip(pairs["train"], pairs["recon"]))
    assert all(perm[found[i]] == i for i in range(6))
    assert metrics["ssim"] > 0.95 and metrics["ssim_hungarian"] >= metrics["ssim"] - 1e-12
    assert metrics["n_train"] == 6 and metrics["psnr_pixel"] > 30


def test_exact_copies_score_one_and_noise_scores_low():
    train = _images(4, 1, 8)
    metrics, _, _ = evaluate(train, train.clone(), mean=[0.5], std=[0.25])
    assert metrics["ssim"] == pytest.approx(1.0)
    noise, _, _ = evaluate(train, torch.randn_like(train), mean=[0.5], std=[0.25])
    assert noise["ssim"] < 0.3


def test_greedy_is_not_optimal_but_hungarian_is():
    s = np.array([[0.9, 0.8], [0.85, 0.1]])
    assert greedy_match(s) == [(0, 0), (1, 1)]  # takes 0.9 first, total 1.0
    assert hungarian_match(s) == [(0, 1), (1, 0)]  # total 1.65


def test_more_reconstructions_than_training_images():
    train = _images(3)
    recon = torch.cat([train, _images(4, seed=1)])
    recon[4] = train[1] + 0.01 * torch.randn_like(train[1])  # a second copy of training image 1
    metrics, pairs, dummies = evaluate(train, recon, mean=[0.5] * 3, std=[0.25] * 3)
    assert len(pairs) == 3 and set(pairs["recon"]) == {0, 1, 2}
    assert metrics["n_recon"] == 7 and len(dummies) == 7
    assert dummies["matched"].tolist() == [True] * 3 + [False] * 4
    assert dummies.loc[4, "nearest_train"] == 1 and dummies.loc[4, "nearest_ssim"] > 0.95
    assert dummies.loc[[3, 5, 6], "nearest_ssim"].max() < 0.7  # unrelated images
    assert metrics["ssim_unmatched_nearest"] == pytest.approx(dummies.loc[3:, "nearest_ssim"].mean())


def test_nan_reconstructions_are_refused():
    train = _images(2)
    recon = train.clone()
    recon[0, 0, 0, 0] = float("nan")
    with pytest.raises(SimudyError, match="NaN"):
        evaluate(train, recon, mean=[0.5] * 3, std=[0.25] * 3)
