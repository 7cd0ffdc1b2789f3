"""Pair reconstructed sentences with the training sentences by token overlap, and score them
with ROUGE-1 and ROUGE-2 (F1, Google's rouge-score), as the gradient-inversion literature on
text reports. Greedy one-to-one matching on ROUGE-1, as `pairing` matches images on SSIM; the
dummies' initial sentences, paired the same way, give the floor a random start scores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rouge_score import rouge_scorer

from simudy.checkpoints import load_weights
from simudy.errors import SimudyError
from simudy.io import read_json
from simudy.pairing import greedy_match, hungarian_match, write_pairs
from simudy.text import Tokens, load_sentences, tokenizer

_SCORER = rouge_scorer.RougeScorer(["rouge1", "rouge2"])


def rouge_matrices(originals: list[str], recons: list[str]) -> dict[str, np.ndarray]:
    """F1 of ROUGE-1 and ROUGE-2, [original, reconstruction]."""
    out = {k: np.zeros((len(originals), len(recons))) for k in ("rouge1", "rouge2")}
    for i, ref in enumerate(originals):
        for j, rec in enumerate(recons):
            scores = _SCORER.score(ref, rec)
            for k in out:
                out[k][i, j] = scores[k].fmeasure
    return out


def score_sentences(originals: list[str], recons: list[str], initial: list[str]) -> tuple[dict, pd.DataFrame]:
    """Metrics and the greedy pairs of reconstructions (and, as the floor, of the initial
    dummies) with the training sentences."""
    s = rouge_matrices(originals, recons)
    s0 = rouge_matrices(originals, initial)
    pairs = greedy_match(s["rouge1"])
    floor = greedy_match(s0["rouge1"])
    n = len(originals)
    table = pd.DataFrame([{"train": i, "recon": j, "rouge1": s["rouge1"][i, j], "rouge2": s["rouge2"][i, j],
                           "initial_rouge1": s0["rouge1"][i, j]} for i, j in pairs])
    metrics = {
        "rouge1": float(table["rouge1"].sum() / n),
        "rouge2": float(table["rouge2"].sum() / n),
        "rouge1_hungarian": float(sum(s["rouge1"][i, j] for i, j in hungarian_match(s["rouge1"])) / n),
        "rouge1_initial": float(sum(s0["rouge1"][i, j] for i, j in floor) / n),
        "rouge2_initial": float(sum(s0["rouge2"][i, j] for i, j in floor) / n),
        "frac_rouge1_ge_0.5": float((table["rouge1"] >= 0.5).sum() / n),
        "exact": float(sum(originals_words(originals[i]) == originals_words(recons[j]) for i, j in pairs) / n),
        "n_train": n, "n_recon": len(recons), "n_pairs": len(pairs),
    }
    return metrics, table


def originals_words(text: str) -> list[str]:
    return _SCORER._tokenizer.tokenize(text)


def read_tokens(path: Path) -> tuple[Tokens, Tokens]:
    """The reconstructed and the initial token ids of a text reconstruction file."""
    state = load_weights(path)
    missing = sorted({"tokens", "lengths", "initial_tokens"} - set(state))
    if missing:
        raise SimudyError(f"{path}: not a text reconstruction (no {missing})")
    tokens, lengths = state["tokens"], state["lengths"]
    if tokens.dtype != torch.int64 or tokens.ndim != 2 or lengths.shape != tokens.shape[:1]:
        raise SimudyError(f"{path}: 'tokens' must be int64 [n, L] with one length each, got "
                          f"{str(tokens.dtype).removeprefix('torch.')} {list(tokens.shape)}")
    return Tokens(tokens, lengths), Tokens(state["initial_tokens"], lengths)


def sentences(tok, tokens: Tokens, special: bool = False) -> list[str]:
    """Each row's text: without [CLS]/[SEP] for scoring, with them (`special`) for the table."""
    return [tok.decode(row[:n].tolist(), skip_special_tokens=not special)
            for row, n in zip(tokens.ids, tokens.lengths.tolist())]


def pair_files(victim_dir: str | Path, reconstruct_dir: str | Path, out_dir: str | Path) -> dict:
    """The pairing stage for text: `metrics.json`, `pairs.csv` (with the original, initial and
    reconstructed sentences: Tab. 2's columns) and `dummies.csv`."""
    victim_dir = Path(victim_dir)
    truth = load_sentences(victim_dir / "truth.npz")
    tok = tokenizer(read_json(victim_dir / "victim.json")["model_kwargs"]["weights"])
    recon, initial = read_tokens(Path(reconstruct_dir) / "reconstruction.safetensors")
    metrics, pairs = score_sentences(truth.sentences, sentences(tok, recon), sentences(tok, initial))
    shown = {"original": [truth.sentences[i] for i in pairs["train"]],
             "initial": [sentences(tok, initial, True)[j] for j in pairs["recon"]],
             "reconstructed": [sentences(tok, recon, True)[j] for j in pairs["recon"]]}
    for k, col in enumerate(("original", "initial", "reconstructed")):
        pairs.insert(2 + k, col, shown[col])
    pairs.insert(1, "source_id", truth.source_ids[pairs["train"]])
    pairs.insert(2, "label", [truth.class_names[i] for i in truth.labels[pairs["train"]]])
    pairs = pairs.sort_values("rouge1", ascending=False, ignore_index=True)
    dummies = pd.DataFrame({"recon": range(len(recon.ids))}).merge(pairs[["recon", "train", "rouge1"]], on="recon",
                                                                     how="left")
    dummies.insert(1, "matched", dummies["train"].notna())
    write_pairs(Path(out_dir), metrics, pairs, dummies)
    return metrics


def progress_monitor(victim_dir: str | Path):
    """Mean ROUGE-1 of the current token ids against the training sentences: a progress
    readout for the log (the attack never sees it)."""
    victim_dir = Path(victim_dir)
    truth = load_sentences(victim_dir / "truth.npz")
    meta = read_json(victim_dir / "victim.json")
    tok = tokenizer(meta["model_kwargs"]["weights"])
    lengths = torch.tensor(meta["tokens"]["lengths"])

    def score(ids: torch.Tensor) -> dict[str, float]:
        rows = Tokens(ids, lengths.repeat(-(-len(ids) // len(lengths)))[: len(ids)])
        s = rouge_matrices(truth.sentences, sentences(tok, rows))["rouge1"]
        return {"rouge1": float(sum(s[i, j] for i, j in greedy_match(s)) / len(truth.sentences))}

    return score
