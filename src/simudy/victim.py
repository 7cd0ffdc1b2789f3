"""The victim bundle: what an attacker is given, and the ground truth kept for evaluation.

A victim directory holds

    theta0.safetensors   initial parameters (and BatchNorm buffers)
    thetaf.safetensors   final parameters
    victim.json          architecture, input (image shape and normalisation, or for text the
                         token counts), classes, training hyper-parameters, subset indices
                         and seeds (`VictimMeta`)
    truth.npz            the training subset, in the canonical dataset format (evaluation only)

`victim.json` is written and read through `VictimMeta`: every problem in it is one error naming
the file and the dotted key. To attack your own model, `simudy import-victim` and
`simudy describe-victim` (simudy.describe) write the bundle; `truth.npz` is needed only for scoring.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, WrapValidator, field_validator, model_validator
from pydantic_core import PydanticCustomError
from torch import nn

from simudy import text
from simudy.checkpoints import State, check_compatible, load_into, load_weights, save_weights
from simudy.config import ExperimentConfig
from simudy.data import Dataset, load_dataset, save_dataset, select_subset
from simudy.errors import SimudyError, dotted, short
from simudy.io import read_json, write_json
from simudy.losses import LossKind
from simudy.models import available, build_model, centre_on, flatten, options
from simudy.train import finetune

log = logging.getLogger(__name__)

META_SCHEMA = 1
# The largest model simudy takes: 0.8 GB per copy of θ in float32, and an attack holds several.
MAX_PARAMETERS = 200_000_000
# The most pixel values the dummy images may hold (n_images × C × H × W; 8 GiB in float32).
MAX_IMAGE_VALUES = 2**31
MAX_SIDE = 4096  # pixels (or channels) along one image axis
MAX_WIDTH = 1_000_000  # one layer's width: far beyond MAX_PARAMETERS already, keeps size estimates exact
MAX_LAYERS = 256


# -- victim.json ------------------------------------------------------------------------------


def _must(description: str) -> WrapValidator:
    """Replace pydantic's wording for a value by one clause saying what it must be."""

    def check(value: Any, handler):
        try:
            return handler(value)
        except ValidationError:
            raise PydanticCustomError("value", f"must be {description}") from None

    return WrapValidator(check)


def _int(low: int, high: int | None = None) -> Any:
    bounds = f"from {low} to {high}" if high is not None else f">= {low}"
    return Annotated[int, Field(ge=low, le=high), _must(f"an integer {bounds}")]


Count = _int(1)
Index = _int(0)
Width = _int(1, MAX_WIDTH)
Side = _int(1, MAX_SIDE)
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False), _must("a finite number > 0")]
NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False), _must("a finite number >= 0")]
Numbers = Annotated[list[Annotated[float, Field(allow_inf_nan=False)]], _must("a list of finite numbers")]
PositiveNumbers = Annotated[list[PositiveFloat], _must("a list of finite numbers > 0")]
Schema = Annotated[int, Field(ge=META_SCHEMA, le=META_SCHEMA), _must(f"{META_SCHEMA}, the version this simudy reads")]
ImageShape = Annotated[list[Side], Field(min_length=3, max_length=3),
                       _must(f"three integers [C, H, W], each from 1 to {MAX_SIDE}")]


class _Meta(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class TrainingMeta(_Meta):
    """How the victim was trained. The attacks read epochs, batch_size, lr and loss; SimuDy
    simulates plain SGD in eval mode over the images in their order, which the rest records."""

    epochs: Count
    batch_size: Count
    lr: PositiveFloat
    loss: LossKind = "cross_entropy"
    optimizer: Literal["sgd"] = "sgd"
    momentum: NonNegativeFloat = 0.0
    weight_decay: NonNegativeFloat = 0.0
    shuffle: bool = False
    model_mode: Literal["eval", "train"] = "eval"


class SubsetMeta(_Meta):
    """Which images of a registry dataset the pipeline's victim trained on."""

    dataset: str
    split: str
    per_class: Index
    offset: Index
    indices: list[Index]
    source_ids: list[str]


class ModelKwargs(BaseModel):
    """The architectures' settings, typed; which of them an architecture takes is its builder's
    signature (`models.options`), checked in `VictimMeta`."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    hidden: Annotated[list[Width], Field(max_length=MAX_LAYERS),
                      _must(f"a list of at most {MAX_LAYERS} widths, each from 1 to {MAX_WIDTH}")] | None = None
    width: Width | None = None
    bias: Annotated[bool | Literal["first"], _must('true, false or "first"')] | None = None
    centred: bool | None = None
    patch: _int(1, 4096) | None = None
    depth: _int(1, MAX_LAYERS) | None = None
    heads: _int(1, 4096) | None = None
    weights: str | None = None


class TokensMeta(_Meta):
    """A text victim's inputs as the attacker knows them: each training sentence's token count
    ([CLS] and [SEP] included), and the ids of the tokens that open, close and pad a sentence."""

    lengths: Annotated[list[_int(2, 512)], Field(min_length=1), _must("a non-empty list of integers from 2 to 512")]
    cls: Index
    sep: Index
    pad: Index


class VictimMeta(_Meta):
    """`victim.json`. Optional: what a victim trained outside the pipeline may not know
    (num_outputs defaults to num_classes; class names, subset, init and losses are records)."""

    schema_: Schema = Field(default=META_SCHEMA, alias="schema")
    input: Literal["image", "text"] = "image"
    arch: str
    model_kwargs: ModelKwargs = ModelKwargs()
    image_shape: ImageShape | None = None  # images only, as mean and std
    tokens: TokensMeta | None = None  # text only
    num_classes: _int(2, 100_000)
    num_outputs: Count | None = None
    class_names: list[str] | None = None
    mean: Numbers | None = None
    std: PositiveNumbers | None = None
    n_images: _int(1, 1_000_000)
    training: TrainingMeta
    subset: SubsetMeta | None = None
    init: dict[str, Any] | None = None
    epoch_losses: list[float] | None = None

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, arch: str) -> str:
        if arch not in available():
            raise PydanticCustomError("value", "{problem}", {"problem": f"unknown; known: {available()}"})
        return arch

    @property
    def outputs(self) -> int:
        return self.num_outputs or self.num_classes

    def kwargs(self) -> dict[str, Any]:
        return self.model_kwargs.model_dump(exclude_unset=True)

    def dump(self) -> dict[str, Any]:
        """As written to victim.json: the keys that were given, nothing filled in but the schema."""
        return {"schema": self.schema_, **self.model_dump(by_alias=True, exclude_unset=True)}

    @model_validator(mode="after")
    def _consistent(self) -> VictimMeta:
        needed = ("image_shape", "mean", "std") if self.input == "image" else ("tokens",)
        for key in needed:
            if getattr(self, key) is None:
                raise _problem(key, f"missing (a victim with {self.input} inputs needs it)")
        if self.input == "text":
            if len(self.tokens.lengths) != self.n_images:
                raise _problem("tokens.lengths", f"{len(self.tokens.lengths)} entries for n_images {self.n_images}")
            self._check_common()
            return self
        channels = self.image_shape[0]
        for key in ("mean", "std"):
            if len(getattr(self, key)) != channels:
                raise _problem(key, f"{len(getattr(self, key))} value(s) for the {channels} channel(s) of image_shape")
        self._check_common()
        values = self.n_images * math.prod(self.image_shape)
        if values > MAX_IMAGE_VALUES:
            raise _problem("n_images", f"{self.n_images} images of shape {self.image_shape} are {values:.3g} pixel "
                                       f"values, more than an attack can hold ({MAX_IMAGE_VALUES:.3g})")
        _check_architecture(self)
        return self

    def _check_common(self) -> None:
        if self.outputs != self.num_classes and not (self.outputs == 1 and self.num_classes == 2):
            raise _problem("num_outputs", f"must be num_classes ({self.num_classes}), or 1 for a two-class "
                                          f"logistic model (got {self.outputs})")
        if (self.outputs == 1) != (self.training.loss == "logistic"):
            raise _problem("training.loss", f"a model with {self.outputs} output(s) cannot train with "
                                            f"{self.training.loss!r}: one output goes with 'logistic', more with "
                                            "'cross_entropy'")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise _problem("class_names", f"{len(self.class_names)} names for num_classes {self.num_classes}")
        if self.subset is not None:
            for key in ("indices", "source_ids"):
                if len(getattr(self.subset, key)) != self.n_images:
                    raise _problem(f"subset.{key}", f"{len(getattr(self.subset, key))} entries for n_images "
                                                    f"{self.n_images}")


def _problem(key: str, problem: str) -> PydanticCustomError:
    return PydanticCustomError("victim_meta", "{key}: {problem}", {"key": key, "problem": problem})


def _check_architecture(meta: VictimMeta) -> None:
    """Keyword settings the architecture takes, and a size the machine can hold (estimated on
    the meta device, which allocates nothing)."""
    kwargs, known = meta.kwargs(), options(meta.arch)
    unknown = sorted(kwargs.keys() - set(known))
    if unknown:
        raise _problem(dotted(("model_kwargs", unknown[0])), f"not a setting of {meta.arch!r}; its settings: {known}")
    count = _parameter_count(meta, kwargs)
    if count > MAX_PARAMETERS:
        key = next((dotted(("model_kwargs", k)) for k in kwargs
                    if _parameter_count(meta, {**kwargs, k: None}) <= MAX_PARAMETERS), "image_shape")
        raise _problem(key, f"makes {meta.arch!r} a model of {count:.3g} parameters, more than simudy takes "
                            f"({MAX_PARAMETERS:.3g})")


def _parameter_count(meta: VictimMeta, kwargs: dict[str, Any]) -> int:
    with torch.device("meta"):
        model = build_model(meta.arch, meta.image_shape, meta.outputs, **kwargs)
    return sum(p.numel() for p in model.parameters())


class MetaError(SimudyError):
    """Problems with a victim.json: (dotted key, or '' for the whole file; what is wrong)."""

    def __init__(self, source: str | Path, problems: list[tuple[str, str]], limit: int = 3):
        clauses = [f"{key}: {text}" if key else text for key, text in problems[:limit]]
        more = f"; and {len(problems) - limit} more" if len(problems) > limit else ""
        super().__init__(f"{source}: {'; '.join(clauses)}{more}")
        self.problems = problems


def read_meta(path: str | Path) -> tuple[dict, VictimMeta]:
    """victim.json as written (what runs fingerprint) and validated."""
    raw = load_json(path)
    return raw, check_meta(raw, path)


def load_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise SimudyError(f"{path}: file not found") from None
    except UnicodeDecodeError:
        raise SimudyError(f"{path}: not valid JSON (not UTF-8 text)") from None
    except OSError as err:
        raise SimudyError(f"{path}: cannot be read ({err.strerror})") from None
    return parse_json(text, path)


def parse_json(text: str, source: str | Path) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as err:  # ValueError: bad JSON, or an integer too long for Python
        raise SimudyError(f"{source}: not valid JSON ({err})") from None


def check_meta(raw: Any, source: str | Path) -> VictimMeta:
    if not isinstance(raw, dict):
        raise MetaError(source, [("", f"must be a JSON object of victim settings, got {_kind(raw)}")])
    try:
        return VictimMeta.model_validate(raw)
    except ValidationError as err:
        raise MetaError(source, [_explain(e) for e in err.errors()]) from None


def _explain(error: dict) -> tuple[str, str]:
    if error["type"] == "victim_meta":
        return error["ctx"]["key"], error["ctx"]["problem"]
    loc = tuple(str(part) for part in error["loc"])
    if error["type"] == "missing":
        return dotted(loc), "missing"
    if error["type"] == "extra_forbidden":
        return dotted(loc), f"unknown key; known: {_known_keys(loc[:-1])}"
    if error["type"] in ("model_type", "model_attributes_type", "dict_type"):
        text = "must be a JSON object"
    else:
        text = error["msg"].replace("Input should", "should")
    return dotted(loc), f"{text} (got {short(error['input'])})"


def _known_keys(parent: tuple[str, ...]) -> list[str]:
    model = {(): VictimMeta, ("training",): TrainingMeta, ("subset",): SubsetMeta, ("tokens",): TokensMeta}[parent]
    return sorted(field.alias or name for name, field in model.model_fields.items())


def _kind(value: Any) -> str:
    kinds = {list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def warn_about_recipe(training: TrainingMeta, source: str | Path) -> list[str]:
    """Log (and return) what of the recipe SimuDy's simulation leaves out: it is plain SGD in
    eval mode over the images in their order."""
    caveats = [f"training.{key} is {getattr(training, key)}" for key in ("momentum", "weight_decay")
               if getattr(training, key)]
    if training.shuffle:
        caveats.append("training.shuffle is true")
    if training.model_mode == "train":
        caveats.append("training.model_mode is 'train'")
    if caveats:
        log.warning("%s: %s; SimuDy simulates plain SGD in eval mode over the images in order, so it may match "
                    "this victim poorly", source, ", ".join(caveats))
    return caveats


# -- the bundle -------------------------------------------------------------------------------


@dataclass
class Victim:
    meta: dict
    model: nn.Module  # the architecture, in eval mode, holding θ0's buffers
    theta0: State | None  # trainable parameters only; None where the threat model withholds θ0
    thetaf: State

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.meta["image_shape"])

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def num_outputs(self) -> int:
        return int(self.meta.get("num_outputs") or self.num_classes)

    @property
    def training(self) -> dict:
        return self.meta["training"]

    def to(self, device: torch.device) -> Victim:
        move = lambda state: state and {k: v.to(device) for k, v in state.items()}  # noqa: E731
        return replace(self, model=self.model.to(device), theta0=move(self.theta0), thetaf=move(self.thetaf))


def make_victim(cfg: ExperimentConfig, dataset: str | Path, init_dir: str | Path, out_dir: str | Path) -> dict:
    """The `finetune-victim` stage: train θ0 on the victim subset and write the bundle."""
    if text.is_text_dataset(dataset):
        return text.make_victim(cfg, dataset, init_dir, out_dir)
    init_dir, out_dir = Path(init_dir), Path(out_dir)
    ds = load_dataset(dataset, split="train")
    if cfg.victim.groups:
        ds = ds.grouped(cfg.victim.groups)
    info = read_json(init_dir / "init.json")
    model = load_into(build_from_meta(info), load_weights(init_dir / "theta0.safetensors"),
                      init_dir / "theta0.safetensors")
    rows = select_subset(ds.labels, cfg.victim.per_class, cfg.victim.offset, len(ds.class_names))
    rows = rows[: cfg.victim.max_images]
    images = ds.normalised(rows)
    centre_on(model, images, ds.std)  # part of θ0: the model's input map, not trained
    theta0 = {k: v.clone() for k, v in model.state_dict().items()}
    losses = finetune(model, images, torch.from_numpy(ds.labels[rows]), cfg.victim)
    meta = check_meta(_metadata(cfg, info, ds, rows, losses), out_dir / "victim.json").dump()
    save_weights(out_dir / "theta0.safetensors", theta0)
    save_weights(out_dir / "thetaf.safetensors", model.state_dict())
    save_dataset(out_dir / "truth.npz", ds.take(rows))
    write_json(out_dir / "victim.json", meta)  # last: its presence marks a complete bundle
    return meta


def _metadata(cfg: ExperimentConfig, info: dict, ds: Dataset, rows, losses: list[float]) -> dict:
    v = cfg.victim
    return {
        "schema": META_SCHEMA,
        **{k: info[k] for k in ("arch", "model_kwargs", "image_shape", "num_outputs")},
        "num_classes": len(ds.class_names),
        "class_names": ds.class_names,
        "mean": ds.mean.tolist(),
        "std": ds.std.tolist(),
        "n_images": len(rows),
        # `epochs` is what ran: fewer than configured when training stopped at `stop_loss`.
        "training": {"epochs": len(losses), "batch_size": v.batch_size, "lr": v.lr, "optimizer": "sgd",
                     "momentum": 0.0, "weight_decay": 0.0, "shuffle": False, "model_mode": "eval",
                     "loss": v.loss},
        "subset": {"dataset": cfg.dataset, "split": "train", "per_class": v.per_class, "offset": v.offset,
                   "indices": rows.tolist(), "source_ids": ds.source_ids[rows].tolist()},
        "init": info["init"],
        "epoch_losses": losses,
    }


def build_from_meta(meta: dict) -> nn.Module:
    outputs = meta.get("num_outputs") or meta.get("num_classes")
    return build_model(meta["arch"], meta.get("image_shape"), outputs, **meta.get("model_kwargs", {}))


def load_victim(victim_dir: str | Path) -> Victim:
    victim_dir = Path(victim_dir)
    meta, checked = read_meta(victim_dir / "victim.json")
    warn_about_recipe(checked.training, victim_dir / "victim.json")
    p0, pf = victim_dir / "theta0.safetensors", victim_dir / "thetaf.safetensors"
    s0, sf = load_weights(p0), load_weights(pf)
    check_compatible(s0, sf, p0, pf)
    model = load_into(build_from_meta(meta), s0, p0).eval()
    names = [n for n, _ in model.named_parameters()]
    return Victim(meta=meta, model=model, theta0={n: s0[n] for n in names}, thetaf={n: sf[n] for n in names})


def parameter_change(victim: Victim, names: list[str] | None = None) -> torch.Tensor:
    """θ0 − θf flattened over the trainable parameters (or those in `names`), in their order."""
    if victim.theta0 is None:
        raise SimudyError("the parameter change needs θ0, which this threat model withholds")
    return flatten([victim.theta0[n] - victim.thetaf[n] for n in (names or victim.theta0)])
