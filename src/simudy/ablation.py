"""Time-to-SSIM ablations: on one victim, the paper's attack settings, each change on its own,
(optionally) all changes but one, and all changes combined, every run within the same
wall-time budget.

An ablation (registry section `ablations`) names an experiment, the profile whose victim is
attacked, and the profile whose attack settings are the baseline (the paper's). Each run
snapshots its images as it goes; afterwards the SSIM (paper protocol) of every snapshot is
read against the run's optimisation time, so evaluation never counts as attack time and a
killed run resumes from its last snapshot.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from simudy.attacks import ThreatModel, get_attack  # noqa: E402
from simudy.checkpoints import load_weights  # noqa: E402
from simudy.config import AblationConfig, AnyAttack, Registry  # noqa: E402
from simudy.data import load_dataset  # noqa: E402
from simudy.io import atomic_path, read_json, save_figure  # noqa: E402
from simudy.pairing import progress_monitor  # noqa: E402
from simudy.reconstruct import run_attack  # noqa: E402
from simudy.victim import load_victim  # noqa: E402

log = logging.getLogger(__name__)


def run(reg: Registry, name: str, run_name: str, victim_dir, out_dir, work_dir) -> pd.DataFrame:
    """The ablation-run stage: one run, then its SSIM-against-time curve (`curve.csv`)."""
    ab = reg.ablation(name)
    cfg = reg.ablation_attack(name, run_name)
    threat = reg.resolve(ab.experiment, ab.profile).reconstruct.threat
    monitor = progress_monitor(load_dataset(Path(victim_dir) / "truth.npz"))
    run_attack(cfg, threat, ab.method, victim_dir, out_dir, work_dir, monitor)
    curve = ssim_curve(cfg, threat, victim_dir, out_dir, work_dir)
    with atomic_path(Path(out_dir) / "curve.csv") as tmp:
        curve.to_csv(tmp, index=False, float_format="%.5g")
    return curve


def ssim_curve(cfg: AnyAttack, threat, victim_dir, out_dir, work_dir) -> pd.DataFrame:
    """SSIM (paper protocol) of the initial images and of every snapshot, with the
    optimisation time and loss at that step."""
    victim_dir, work_dir = Path(victim_dir), Path(work_dir)
    ssim = progress_monitor(load_dataset(victim_dir / "truth.npz"))
    loss = pd.read_csv(Path(out_dir) / "loss.csv").set_index("step")
    victim = load_victim(victim_dir)
    attack = get_attack(cfg)
    attack.start(victim, ThreatModel.from_victim(victim, threat), torch.device("cpu"))
    rows = [{"step": 0, "seconds": 0.0, "loss": np.nan, **ssim(attack.images().detach())}]
    for path in sorted((work_dir / "snapshots").glob("images_*.safetensors")):
        step = int(re.findall(r"\d+", path.stem)[-1])
        if step in loss.index:
            rows.append({"step": step, "seconds": float(loss.loc[step, "seconds"]),
                         "loss": float(loss.loc[step, "loss"]), **ssim(load_weights(path)["images"])})
    return pd.DataFrame(rows)


# -- the table and the plot -------------------------------------------------------------------


def summarise(ab: AblationConfig, curves: dict[str, pd.DataFrame], runs: dict[str, dict]) -> pd.DataFrame:
    """One row per run: its changes, time per step, wall time to each SSIM threshold and the
    SSIM after each time mark (the last snapshot within it)."""
    rows = []
    for name, curve in curves.items():
        minutes = curve["seconds"] / 60
        row = {"run": name, "changes": _describe(ab.overrides(name)),
               "s_per_step": runs[name]["seconds_per_step"], "steps": runs[name]["steps"],
               "ssim_init": float(curve["ssim"].iloc[0])}
        for t in ab.thresholds:
            reached = minutes[curve["ssim"] >= t]
            row[f"min_to_{t:g}"] = float(reached.iloc[0]) if len(reached) else np.nan
        for m in ab.at_minutes:
            row[f"ssim_at_{m:g}min"] = float(curve["ssim"][minutes <= m + 1e-9].iloc[-1])
        row["ssim_final"] = float(curve["ssim"].iloc[-1])
        rows.append(row)
    return pd.DataFrame(rows)


def _describe(overrides: dict, prefix: str = "") -> str:
    parts = []
    for k, v in overrides.items():
        parts.append(_describe(v, f"{prefix}{k}.") if isinstance(v, dict) else f"{prefix}{k}={v}")
    return ", ".join(parts) or "(the paper's settings)"


def make_table(reg: Registry, name: str, runs_root, out_dir) -> pd.DataFrame:
    """The ablation-table stage: `table.md`, `table.csv` and `curve.png` from every run."""
    ab = reg.ablation(name)
    runs_root, out_dir = Path(runs_root), Path(out_dir)
    names = ab.runs()
    curves = {n: pd.read_csv(runs_root / n / "curve.csv") for n in names}
    info = {n: read_json(runs_root / n / "run.json") for n in names}
    table = summarise(ab, curves, info)
    with atomic_path(out_dir / "table.csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.4g")
    title = f"{ab.title} (victim: {ab.experiment}, {ab.profile} profile; budget {ab.minutes:g} min per run)"
    with atomic_path(out_dir / "table.md") as tmp:
        tmp.write_text(f"# {title}\n\nMinutes are optimisation time (pre-training, victim training and "
                       "evaluation excluded); blank: not reached within the budget.\n\n"
                       + table.astype(object).where(table.notna(), None).to_markdown(index=False, floatfmt=".3g",
                                                                              missingval="") + "\n")
    plot(out_dir / "curve.png", ab, curves, title)
    return table


def plot(path, ab: AblationConfig, curves: dict[str, pd.DataFrame], title: str) -> None:
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name, curve in curves.items():
        style = {"lw": 2.2, "color": "black"} if name == ab.COMBINED else {"lw": 1.2}
        if name.startswith(ab.WITHOUT):
            style["ls"] = "--"
        ax.plot(curve["seconds"] / 60, curve["ssim"], label=name, **style)
    for t in ab.thresholds:
        ax.axhline(t, color="grey", lw=0.6, ls=":")
    ax.set_xlabel("optimisation time (minutes)")
    ax.set_ylabel("mean SSIM (paper protocol)")
    ax.set_xlim(0, ab.minutes)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9, wrap=True)
    fig.tight_layout()
    save_figure(fig, path)
