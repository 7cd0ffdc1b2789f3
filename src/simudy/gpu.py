"""`make gpu`: the paper-scale runs for one CUDA machine, in order, then a summary.

SimuDy first, the baselines last (they run up to 100 000 steps each): 1. fig1's SimuDy at the
profile (the paper's settings), 2. fig1 at `<profile>_fast` (the same victim, the attack
settings the fig1_speed ablation kept), 3. the simulator benchmark suite `bench/gpu.yaml`,
4. fig5's SimuDy, 5.–6. fig1's and fig5's remaining methods and reports. Each step is one
Snakemake call, so a killed run picks up where it stopped (finished outputs are kept, attacks
resume from their snapshots); a failed step is recorded and the next one still runs.
Everything lands under `results/`; `results/gpu/<profile>/summary.{md,json}` says what
finished, with SSIM against the paper's values and the wall times.
"""

from __future__ import annotations

import json
import logging
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from simudy.config import Registry
from simudy.io import atomic_path, write_json

log = logging.getLogger(__name__)

BENCH_SUITE = "gpu"


@dataclass(frozen=True)
class Step:
    name: str
    targets: list[str]
    experiment: str | None = None
    profile: str | None = None


def plan(profile: str) -> list[Step]:
    def simudy(name: str, step: str, prof: str) -> Step:
        return Step(step, [f"results/{name}/{prof}/evaluate/simudy/metrics.json"], name, prof)

    def everything(name: str, step: str, prof: str) -> Step:
        run = f"results/{name}/{prof}"
        return Step(step, [f"{run}/metrics.json", f"{run}/report/figure.png"], name, prof)

    return [simudy("fig1", "fig1", profile),
            everything("fig1", "fig1_fast", f"{profile}_fast"),
            Step("bench", [f"results/bench/{BENCH_SUITE}/bench.md"]),
            simudy("fig5", "fig5", profile),
            everything("fig1", "fig1_all", profile),
            everything("fig5", "fig5_all", profile)]


def run(reg: Registry, profile: str, cores: str = "all", snakemake: str = "snakemake") -> list[dict]:
    """Run every step of the plan, each logged to results/gpu/<profile>/logs/<step>.log."""
    out = Path("results/gpu") / profile
    (out / "logs").mkdir(parents=True, exist_ok=True)
    records = []
    for step in plan(profile):
        log.info("gpu step %s: %s", step.name, " ".join(step.targets))
        t0 = time.perf_counter()
        with open(out / "logs" / f"{step.name}.log", "a") as fh:
            rc = subprocess.run([snakemake, "--cores", cores, "--", *step.targets], stdout=fh,
                                stderr=subprocess.STDOUT).returncode
        minutes = (time.perf_counter() - t0) / 60
        log.info("gpu step %s: %s in %.1f min", step.name, "done" if rc == 0 else f"failed ({rc})", minutes)
        records.append({"step": step.name, "status": "done" if rc == 0 else f"failed (exit {rc})",
                        "minutes_this_call": round(minutes, 2), **_results(reg, step)})
    summarise(profile, records, out)
    return records


def _results(reg: Registry, step: Step) -> dict:
    if step.experiment is None:
        path = Path(step.targets[0])
        return {"table": path.read_text()} if path.exists() else {}
    run = Path("results") / step.experiment / step.profile
    paper = reg.resolve(step.experiment, step.profile).evaluate.paper_ssim
    methods = {}
    for metrics in sorted((run / "evaluate").glob("*/metrics.json")):
        method = metrics.parent.name
        info = run / "reconstruct" / method / "run.json"
        seconds = json.loads(info.read_text())["seconds"] if info.exists() else None
        methods[method] = {"ssim": json.loads(metrics.read_text())["ssim"], "paper_ssim": paper.get(method),
                           "attack_minutes": None if seconds is None else round(seconds / 60, 2)}
    return {"methods": methods} if methods else {}


def _device() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU only ({platform.processor() or platform.machine()})"


def _commit() -> str:
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() or "unknown"


def summarise(profile: str, records: list[dict], out: Path) -> None:
    head = {"profile": profile, "device": _device(), "commit": _commit(),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    write_json(out / "summary.json", {**head, "steps": records})
    lines = [f"# GPU run at profile `{profile}`", "",
             f"Device: {head['device']}; commit {head['commit']}; finished {head['finished']}.", "",
             "| step | status | minutes (this call) | method | SSIM | paper SSIM | attack minutes |",
             "|---|---|---|---|---|---|---|"]
    for r in records:
        rows = r.get("methods") or {"": {}}
        for method, m in rows.items():
            lines.append(f"| {r['step']} | {r['status']} | {r['minutes_this_call']} | {method} | "
                         f"{_fmt(m.get('ssim'))} | {_fmt(m.get('paper_ssim'))} | {_fmt(m.get('attack_minutes'))} |")
    for r in records:
        if "table" in r:
            lines += ["", f"## {r['step']}", "", r["table"]]
    with atomic_path(out / "summary.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def _fmt(value) -> str:
    return "" if value is None else f"{value:.4g}"
