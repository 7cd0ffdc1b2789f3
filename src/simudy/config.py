"""Typed configuration and the experiment registry (`params/experiments.yaml`).

The registry is the single source of truth read by the Snakefile, by `dvc.yaml` and by the
CLI. An experiment's effective configuration for a profile is

    defaults  <-  experiments.<name>  <-  experiments.<name>.profiles.<profile>

merged section by section (`init`, `victim`, `reconstruct`, `evaluate`) and then validated
against the models below, which reject unknown keys and wrong types.
"""

from __future__ import annotations

import copy
from functools import reduce
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from simudy.errors import SimudyError

SECTIONS = ("init", "victim", "reconstruct", "evaluate")
DEFAULT_REGISTRY = Path("params/experiments.yaml")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DatasetConfig(Strict):
    source: Literal["cifar10", "imagefolder", "digits"]
    path: str | None = None  # imagefolder: a directory or .zip; cifar10: a local tarball
    url: str | None = None
    md5: str | None = None
    # Normalisation constants; computed from the train split when absent.
    mean: list[float] | None = None
    std: list[float] | None = None
    # Keep only these classes (indices into the sorted class list), in this order.
    classes: list[int] | None = None


class InitConfig(Strict):
    """How θ0 is made: the architecture, and pre-training or a seeded random init."""

    arch: str
    width: int | None = None  # ResNet base width (64 in the paper)
    hidden: list[int] | None = None  # MLP hidden widths
    init: Literal["random", "pretrained"]
    seed: int
    # Pre-training (init == "pretrained") runs on the test split: disjoint from every victim
    # subset, which is drawn from the train split.
    split: Literal["train", "test"]
    limit: int | None = None  # use only the first `limit` images of the split
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    augment: bool

    def model_kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in {"width": self.width, "hidden": self.hidden}.items() if v is not None}


class VictimConfig(Strict):
    """The victim's fine-tuning, following the authors' protocol exactly."""

    per_class: int = Field(ge=0)
    offset: int = Field(ge=0)
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)


class ReconstructConfig(Strict):
    attack: Literal["simudy"]
    steps: int = Field(ge=1)
    n_images: int | None = None  # dummy-set size; None = the victim's dataset size
    init_scale: float  # dummy images ~ init_scale * N(0, 1) in normalised space
    sim_epochs: int = Field(ge=1)
    sim_batch_size: int | None = None  # None = the victim's
    sim_lr: float | None = None  # None = the victim's
    clip_max_norm: float  # a simulated step whose gradient norm exceeds this ...
    clip_to_norm: float  # ... is rescaled to this norm ...
    clip_fraction: float = Field(ge=0, le=1)  # ... during this first fraction of outer steps
    loss: Literal["cosine", "euclidean"]
    tv_weight: float = Field(ge=0)
    lr: float = Field(gt=0)
    betas: list[float]
    cosine_period: int = Field(ge=1)  # T_max of the cyclic cosine schedule, in steps
    snapshot_every: int = Field(ge=1)
    log_every: int = Field(ge=1)
    seed: int
    device: Literal["auto", "cpu", "cuda"]


class EvaluateConfig(Strict):
    show: int = Field(ge=1)  # reconstructions shown in the figure (best first)
    columns: int = Field(ge=1)
    paper_ssim: float | None = None  # the paper's reported value, printed beside ours
    paper_ref: str | None = None


class ExperimentConfig(Strict):
    """The effective configuration of one experiment at one profile."""

    name: str
    profile: str
    title: str
    dataset: str
    data: DatasetConfig
    init: InitConfig
    victim: VictimConfig
    reconstruct: ReconstructConfig
    evaluate: EvaluateConfig

    def section(self, name: str) -> dict[str, Any]:
        return getattr(self, name).model_dump()


Overrides = dict[str, Any]


class Sections(Strict):
    """Partial values for each section; all four must be present (`{}` where nothing changes)."""

    init: Overrides
    victim: Overrides
    reconstruct: Overrides
    evaluate: Overrides


class ExperimentEntry(Sections):
    title: str
    dataset: str
    profiles: dict[str, Sections]


class Registry(Strict):
    active_profile: str
    datasets: dict[str, DatasetConfig]
    defaults: Sections
    experiments: dict[str, ExperimentEntry]
    _source: str = PrivateAttr(default="<registry>")

    @model_validator(mode="after")
    def _consistent(self) -> Registry:
        for name, exp in self.experiments.items():
            if exp.dataset not in self.datasets:
                raise ValueError(f"experiment {name!r} uses unknown dataset {exp.dataset!r}")
            if self.active_profile not in exp.profiles:
                raise ValueError(f"experiment {name!r} has no profile {self.active_profile!r}")
        return self

    def resolve(self, experiment: str, profile: str) -> ExperimentConfig:
        if experiment not in self.experiments:
            raise SimudyError(f"{self._source}: unknown experiment {experiment!r}; known: {sorted(self.experiments)}")
        entry = self.experiments[experiment]
        if profile not in entry.profiles:
            raise SimudyError(
                f"{self._source}: experiment {experiment!r} has no profile {profile!r}; known: {sorted(entry.profiles)}"
            )
        layers = (self.defaults, entry, entry.profiles[profile])
        merged = {s: reduce(_deep_merge, (getattr(layer, s) for layer in layers), {}) for s in SECTIONS}
        try:
            return ExperimentConfig(
                name=experiment,
                profile=profile,
                title=entry.title,
                dataset=entry.dataset,
                data=self.datasets[entry.dataset],
                **merged,
            )
        except ValidationError as err:
            raise SimudyError(
                f"{self._source}: experiment {experiment!r} at profile {profile!r}: {_format(err)}"
            ) from None


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _format(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"])
        parts.append(f"{where}: {e['msg']} (got {e.get('input')!r})")
    return "; ".join(parts)


def load_registry(path: str | Path = DEFAULT_REGISTRY) -> Registry:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SimudyError(f"{path}: registry file not found") from None
    except yaml.YAMLError as err:
        raise SimudyError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise SimudyError(f"{path}: expected a mapping at the top level")
    try:
        registry = Registry(**raw)
    except ValidationError as err:
        raise SimudyError(f"{path}: {_format(err)}") from None
    registry._source = str(path)
    for name, entry in registry.experiments.items():  # a mistake anywhere in the file fails here
        for profile in entry.profiles:
            registry.resolve(name, profile)
    return registry


def load_experiment(experiment: str, profile: str, registry: str | Path = DEFAULT_REGISTRY) -> ExperimentConfig:
    return load_registry(registry).resolve(experiment, profile)
