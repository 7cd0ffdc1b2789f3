"""Benchmark of SimuDy's simulator modes against the straightforward implementation.

A suite `bench/<suite>.yaml` names the modes (a `simulator` config each; `reference` is
`simulate_reference.py`) and two kinds of case:
- cost: an experiment's SimuDy at given overrides (e.g. ResNet-18 width 64, 120 images) on a
  seeded random θ0 and target, timed for a few outer steps after a warm-up; also the first
  step's loss and image gradient, which every mode must reproduce;
- quality: SimuDy on the experiment's trained victim until the mean SSIM first reaches a
  threshold; the wall time excludes the evaluations.
Each (case, mode) runs in a fresh process, so that its peak RSS is its own.
"""

from __future__ import annotations

import copy
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal

import pandas as pd
import torch
import yaml
from pydantic import Field

from simudy.attacks import ThreatModel, get_attack
from simudy.attacks.simudy import pick_simulator
from simudy.config import SimulatorConfig, Strict, load_experiment
from simudy.data import load_dataset
from simudy.devices import pick_device
from simudy.errors import SimudyError
from simudy.io import atomic_path, write_json
from simudy.models import build_model, flatten
from simudy.objectives import cosine_distance
from simudy.pairing import evaluate
from simudy.victim import Victim, load_victim

log = logging.getLogger(__name__)


class CostCase(Strict):
    kind: Literal["cost"]
    experiment: str
    profile: str
    init: dict = {}  # overrides of the experiment's init section (e.g. width)
    n_images: int = Field(ge=1)
    image_shape: list[int]
    num_classes: int
    steps: int = Field(default=2, ge=1)  # timed outer steps, after one warm-up step


class QualityCase(Strict):
    kind: Literal["quality"]
    experiment: str
    profile: str
    threshold: float  # mean SSIM (paper protocol) to reach
    max_steps: int = Field(ge=1)
    eval_every: int = Field(ge=1)
    attack: dict = {}  # overrides of the experiment's SimuDy config besides `simulator`


class PrecisionCheck(Strict):
    case: str  # a cost case
    modes: list[str]


class PaperCost(Strict):
    memory_mb: float = Field(gt=0)
    hours: float = Field(gt=0)


class Projection(Strict):
    """Tab. 3: what a full run costs at the measured per-step time, beside the paper's figures."""

    steps: int = Field(ge=1)  # outer steps of a full run (the paper's 30 000)
    paper: dict[int, PaperCost] = {}  # dataset size -> the paper's figures (RTX 4090)
    hardware: str = ""  # the paper's machine, for the table's heading


class Settings(Strict):
    modes: dict[str, SimulatorConfig]
    cases: dict[str, CostCase | QualityCase]
    # Modes per case; a mode's overrides of the attack (e.g. a shorter schedule) go in `tuning`.
    runs: dict[str, list[str]]
    tuning: dict[str, dict] = {}
    precision_check: PrecisionCheck | None = None
    projection: Projection | None = None


def load_settings(path: str | Path) -> Settings:
    try:
        raw = yaml.safe_load(Path(path).read_text())
        settings = Settings.model_validate(raw, strict=False)
    except (OSError, yaml.YAMLError, ValueError) as err:
        raise SimudyError(f"{path}: {err}") from err
    for case, modes in settings.runs.items():
        unknown = {case} - set(settings.cases) | set(modes) - set(settings.modes)
        if unknown:
            raise SimudyError(f"{path}: runs.{case} names unknown cases or modes: {sorted(unknown)}")
    check = settings.precision_check
    case = settings.cases.get(check.case) if check else None
    if check and (case is None or case.kind != "cost" or set(check.modes) - set(settings.modes)):
        raise SimudyError(f"{path}: precision_check needs a cost case and known modes")
    return settings


# -- one measurement, in its own process ------------------------------------------------------


def measure(case: CostCase | QualityCase, simulator: SimulatorConfig, tuning: dict, grad_out: Path | None) -> dict:
    cfg = load_experiment(case.experiment, case.profile)
    attack_cfg = cfg.reconstruct.method("simudy")
    update = {**(case.attack if case.kind == "quality" else {}), **tuning, "simulator": simulator.model_dump()}
    try:
        attack_cfg = type(attack_cfg).model_validate(attack_cfg.model_dump() | update)
    except ValueError as err:
        raise SimudyError(f"benchmark overrides of {case.experiment}'s simudy config: {err}") from err
    attack = get_attack(attack_cfg)
    device = pick_device(attack_cfg.device)
    if case.kind == "cost":
        victim = _random_victim(cfg, case)
        threat = ThreatModel.from_victim(victim, cfg.reconstruct.threat)
        return _cost(attack, victim, threat, case, device, grad_out)
    victim_dir = Path("results") / case.experiment / case.profile / "victim"
    victim = load_victim(victim_dir)
    threat = ThreatModel.from_victim(victim, cfg.reconstruct.threat)
    return _time_to_quality(attack, victim, threat, case, load_dataset(victim_dir / "truth.npz"), device)


def _random_victim(cfg, case: CostCase) -> Victim:
    """θ0 of the case's architecture (seeded) and a θf one random step away: the step cost does
    not depend on what the parameters are."""
    init = cfg.init.model_copy(update=case.init)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = build_model(init.arch, tuple(case.image_shape), case.num_classes, **init.model_kwargs()).eval()
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    thetaf = {n: p - 1e-3 * torch.randn(p.shape, generator=gen) for n, p in theta0.items()}
    meta = {"arch": init.arch, "image_shape": case.image_shape, "num_classes": case.num_classes,
            "n_images": case.n_images, "mean": [0.0] * case.image_shape[0], "std": [1.0] * case.image_shape[0],
            "training": {**cfg.victim.model_dump(include={"epochs", "batch_size", "lr", "loss"})}}
    return Victim(meta=meta, model=model, theta0=theta0, thetaf=thetaf)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def _current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")  # not Linux


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cost(attack, victim, threat, case: CostCase, device, grad_out: Path | None) -> dict:
    attack.start(victim, threat, device)
    # The interpreter, torch and the model before any simulation: common to every mode.
    baseline = _current_rss_mb() if device.type == "cpu" else 0.0
    images = attack.tensors["images"]
    loss, _ = attack.objective(images, attack.plan(0))
    (grad,) = torch.autograd.grad(loss, images)
    if grad_out is not None:
        torch.save({"loss": loss.detach().cpu(), "grad": grad.cpu()}, grad_out)
    del loss, grad
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    attack.step(0)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    for step in range(1, case.steps + 1):
        attack.step(step)
    _sync(device)
    seconds = (time.perf_counter() - t0) / case.steps
    peak = _peak_memory_mb(device)
    return {"seconds_per_step": seconds, "peak_mb": peak, "peak_above_start_mb": peak - baseline,
            "device": str(device)}


def _time_to_quality(attack, victim, threat, case: QualityCase, truth, device) -> dict:
    attack.start(victim, threat, device)
    train = truth.normalised()
    seconds, reached, ssim = 0.0, None, float("nan")
    for step in range(case.max_steps):
        _sync(device)
        t0 = time.perf_counter()
        attack.step(step)
        _sync(device)
        seconds += time.perf_counter() - t0
        if (step + 1) % case.eval_every == 0:
            images = attack.tensors["images"].detach().cpu()
            ssim = evaluate(train, images, truth.mean, truth.std)[0]["ssim"]
            if ssim >= case.threshold:
                reached = step + 1
                break
    return {"seconds_to_quality": seconds if reached else None, "steps_to_quality": reached,
            "final_ssim": ssim, "seconds_per_step": seconds / (step + 1), "peak_mb": _peak_memory_mb(device),
            "device": str(device)}


# -- the whole benchmark ----------------------------------------------------------------------


def run_benchmark(settings_path: str | Path, out_dir: str | Path, only: list[str] | None = None) -> pd.DataFrame:
    """Every (case, mode) of `runs` in a subprocess; writes `bench.csv`, `bench.md` and `bench.json`."""
    settings = load_settings(settings_path)
    out_dir = Path(out_dir)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case, modes in settings.runs.items():
            if only and case not in only:
                continue
            for mode in modes:
                grad = Path(tmp) / f"{case}.{mode}.pt" if settings.cases[case].kind == "cost" else None
                row = _subprocess(settings_path, case, mode, grad)
                rows.append({"case": case, "mode": mode, **row, **_agreement(grad, Path(tmp) / f"{case}.reference.pt")})
                log.info("%s / %s: %s", case, mode, rows[-1])
    table = _ratios(pd.DataFrame(rows))
    with atomic_path(out_dir / "bench.csv") as path:
        table.to_csv(path, index=False, float_format="%.4g")
    with atomic_path(out_dir / "bench.md") as path:
        path.write_text(table.to_markdown(index=False, floatfmt=".4g") + "\n")
    write_json(out_dir / "bench.json", {"rows": table.to_dict(orient="records")})
    return table


def _subprocess(settings_path, case: str, mode: str, grad: Path | None) -> dict:
    cmd = [sys.executable, "-m", "simudy", "bench-one", "--settings", str(settings_path), "--case", case,
           "--mode", mode] + (["--grad-out", str(grad)] if grad else [])
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        # Out of memory is a result (the reference cannot run there), not a crash of the benchmark.
        log.warning("%s / %s failed (exit %d): %s", case, mode, done.returncode, done.stderr.strip()[-500:])
        return {"error": f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _agreement(grad: Path | None, reference: Path) -> dict:
    """The first step's loss and image gradient against the reference's."""
    if grad is None or not grad.exists() or not reference.exists():
        return {}
    a, b = torch.load(grad, weights_only=True), torch.load(reference, weights_only=True)
    g, r = a["grad"].flatten().double(), b["grad"].flatten().double()
    return {"loss_rel_diff": float((a["loss"] - b["loss"]).abs() / b["loss"].abs()),
            "grad_rel_diff": float((g - r).norm() / r.norm()),
            "grad_cosine": float(torch.nn.functional.cosine_similarity(g, r, dim=0))}


def _ratios(table: pd.DataFrame) -> pd.DataFrame:
    """Each mode's figures divided by the reference's on the same case, side by side."""
    for col in ("seconds_per_step", "peak_mb", "peak_above_start_mb", "seconds_to_quality"):
        if col not in table:
            continue
        ref = table[table["mode"] == "reference"].set_index("case")[col]
        table[f"{col}_ratio"] = table[col] / table["case"].map(ref)
    return table


def measure_one(settings_path, case: str, mode: str, grad_out: str | None) -> dict:
    settings = load_settings(settings_path)
    return measure(settings.cases[case], settings.modes[mode], settings.tuning.get(mode, {}),
                   Path(grad_out) if grad_out else None)


# -- Tab. 3: projected cost of a full run ----------------------------------------------------------


def write_projection(settings_path: str | Path, bench_csv: str | Path, out_dir: str | Path) -> pd.DataFrame:
    """Per cost case and mode: the measured seconds per step and peak memory, the hours the
    suite's `projection.steps` would take at that rate, and the paper's figures for the same
    dataset size; `projection.md` and `projection.csv`."""
    settings = load_settings(settings_path)
    if settings.projection is None:
        raise SimudyError(f"{settings_path}: no projection section")
    proj = settings.projection
    rows = []
    for r in pd.read_csv(bench_csv).itertuples():
        case = settings.cases.get(r.case)
        if case is None or case.kind != "cost":
            continue
        paper = proj.paper.get(case.n_images)
        failed = isinstance(getattr(r, "error", None), str)  # e.g. out of memory
        per_step = None if failed else r.seconds_per_step
        rows.append({"n_images": case.n_images, "mode": r.mode, "device": r.error if failed else r.device,
                     "seconds_per_step": per_step, "peak_mb": None if failed else r.peak_mb,
                     f"hours_for_{proj.steps}_steps": None if failed else per_step * proj.steps / 3600,
                     "paper_memory_mb": paper.memory_mb if paper else None,
                     "paper_hours": paper.hours if paper else None})
    table = pd.DataFrame(rows).sort_values(["n_images", "mode"], kind="stable")
    heading = (f"# SimuDy's cost against the dataset size ({settings_path})\n\nMeasured per outer step; the "
               f"hours are {proj.steps} steps at that rate. The paper's figures: {proj.hardware or 'as reported'}.\n\n")
    with atomic_path(Path(out_dir) / "projection.csv") as path:
        table.to_csv(path, index=False, float_format="%.4g")
    with atomic_path(Path(out_dir) / "projection.md") as path:
        formats = ("g", "g", "g", ".2f", ".0f", ".1f", ".0f", ".2f")  # the columns of `rows`, in order
        path.write_text(heading + table.to_markdown(index=False, floatfmt=formats, missingval="") + "\n")
    write_json(Path(out_dir) / "projection.json", _by_size(table, proj.steps))
    return table


def _by_size(table: pd.DataFrame, steps: int) -> dict:
    """{n<size>: {mode: {seconds_per_step, peak_mb, hours}}}, for the catalogue."""
    out: dict = {}
    for r in table.itertuples(index=False):
        out.setdefault(f"n{r.n_images}", {})[r.mode] = {
            "seconds_per_step": r.seconds_per_step, "peak_mb": r.peak_mb,
            "hours": getattr(r, f"hours_for_{steps}_steps")}
    return out


# -- float32 rounding against float64 ---------------------------------------------------------


def run_precision_check(settings_path: str | Path, out_dir: str | Path) -> pd.DataFrame:
    """Each mode's first-step image gradient (float32, CPU) against the straightforward simulator's
    in float64. Exact modes differ from the float32 reference by rounding alone; this shows how
    large float32 rounding is, so that their differences can be read against it."""
    settings = load_settings(settings_path)
    check = settings.precision_check
    if check is None:
        raise SimudyError(f"{settings_path}: no precision_check section")
    case = settings.cases[check.case]
    cfg = load_experiment(case.experiment, case.profile)
    victim = _random_victim(cfg, case)
    attack = get_attack(cfg.reconstruct.method("simudy"))
    attack.start(victim, ThreatModel.from_victim(victim, cfg.reconstruct.threat), torch.device("cpu"))
    exact = _distance_gradient(attack, torch.float64, SimulatorConfig(reference=True))
    rows = []
    for mode in check.modes:
        grad = _distance_gradient(attack, torch.float32, settings.modes[mode])
        rows.append({"case": check.case, "mode": mode,
                     "grad_rel_error_vs_float64": float((grad - exact).norm() / exact.norm())})
        log.info("%s", rows[-1])
    table = pd.DataFrame(rows)
    with atomic_path(Path(out_dir) / "precision.md") as path:
        path.write_text(table.to_markdown(index=False, floatfmt=".3g") + "\n")
    return table


def _distance_gradient(attack, dtype: torch.dtype, simulator: SimulatorConfig) -> torch.Tensor:
    """The image gradient of the cosine distance at the attack's first outer step, in `dtype`."""
    model = copy.deepcopy(attack.victim.model).to(dtype)
    theta0 = {k: v.to(dtype) for k, v in attack.victim.theta0.items()}
    x = attack.tensors["images"].detach().to(dtype).clone().requires_grad_(True)
    sim = pick_simulator(simulator)(model, theta0, x, attack.labels, attack.plan(0))
    cosine_distance(flatten(sim.grad_sum), attack.target.to(dtype)).backward()
    return x.grad.double()
