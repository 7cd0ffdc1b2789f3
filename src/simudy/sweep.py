"""A sweep's summary (Figs. 2, 3, 7, 9, 10): one method run over a grid of its settings.

`sweep.csv` has a row per grid point: its values, the final loss, the loss after the probe (the
step at which a learning-rate search decides, `search.probe_steps`), the SSIM and, where the
attack measured them, the dummies' contributions. Where the grid varies the simulation lr,
the metrics hold, for each value of the other settings, the rank correlation of the final loss
and of the probe's loss with the final SSIM (Figs. 2 and 3: lower loss goes with higher SSIM)
and which lr the probe would have picked; the figure plots loss and SSIM against the lr. Other
sweeps (a guessed batch size, a dummy-set size) plot the loss curves, the SSIM and the
contributions of matched and unmatched dummies side by side. Where the experiment repeats its
runs over attack seeds (`reconstruct.seeds`), a point's row also has its SSIM's mean and sd over
the seeds (error bars in the figure); every other number in the row is the run at its own seed,
and the metrics hold every seed's numbers beside it, the lr curves' correlations and best lr
included (each computed from one seed's runs).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from simudy.config import ExperimentConfig, point_name  # noqa: E402
from simudy.errors import SimudyError  # noqa: E402
from simudy.io import atomic_path, save_figure, write_json  # noqa: E402
from simudy.report import load_results  # noqa: E402

LR = "sim_lr"


def run_numbers(cfg: ExperimentConfig, results: list) -> dict[str, dict]:
    """Each run's numbers by run name (`results`: report.MethodResult of each run)."""
    return {r.name: _numbers(cfg, r) for r in results}


def sweep_table(cfg: ExperimentConfig, runs: dict[str, dict]) -> pd.DataFrame:
    """A row per grid point (`runs`: run_numbers)."""
    points = cfg.reconstruct.sweep.points()
    return pd.DataFrame([{"run": name, **points[name], **runs[name],
                          **_over_seeds(cfg.reconstruct.repeats(name), runs)}
                         for name in runs if name in points])


def _numbers(cfg: ExperimentConfig, r) -> dict:
    """One run's numbers for its point's row."""
    probe_step = cfg.reconstruct.method(r.name).search.probe_steps
    at_probe = r.loss.loc[r.loss["step"] == probe_step, "loss"]
    search = r.run.get("search", {})
    return {
        "final_loss": r.run["final_loss"], "probe_loss": float(at_probe.iloc[0]) if len(at_probe) else np.nan,
        "ssim": r.metrics["ssim"], "ssim_matched": r.metrics["ssim_matched"], "n_recon": r.metrics["n_recon"],
        "searched_lr": search.get("lr", np.nan), "seconds": r.run["seconds"],
        **{k: v for k, v in r.metrics.items() if k.startswith("contribution_")},
    }


def _over_seeds(repeats: dict[int, str], runs: dict) -> dict:
    """A point's SSIM over its attack seeds, where it is repeated over `reconstruct.seeds`."""
    if not repeats:
        return {}
    ssim = [runs[run]["ssim"] for run in repeats.values()]
    return {"n_seeds": len(ssim), "ssim_seed_mean": float(np.mean(ssim)), "ssim_seed_sd": float(np.std(ssim, ddof=1))}


def seed_numbers(cfg: ExperimentConfig, runs: dict[str, dict]) -> dict[str, dict[str, dict]]:
    """Each repeated point's numbers per attack seed, as `{point: {seed: numbers}}` (`runs`:
    run_numbers)."""
    return {name: {str(seed): runs[run] for seed, run in repeats.items()}
            for name in cfg.reconstruct.sweep.points() if (repeats := cfg.reconstruct.repeats(name))}


def sweep_metrics(cfg: ExperimentConfig, table: pd.DataFrame, seeds: dict[str, dict]) -> dict:
    """The sweep's metrics; a repeated point carries its runs' numbers under `seeds`. Where every
    point is repeated, the lr curves' numbers are also given per seed, each from that seed's
    runs alone, under the top-level `seeds`. simudy.catalogue reads either as mean ± sd."""
    sweep = cfg.reconstruct.sweep
    out: dict = {"points": table.set_index("run").drop(columns=list(sweep.grid)).to_dict(orient="index")}
    for name, per_seed in seeds.items():
        out["points"][name]["seeds"] = per_seed
    out |= _lr_curves(sweep, table)
    if LR in sweep.grid and seeds.keys() == out["points"].keys():
        out["seeds"] = {seed: _lr_curves(sweep, rows) for seed, rows in _seed_tables(sweep, table, seeds).items()}
    if cfg.evaluate.paper_values:
        out["paper"] = dict(cfg.evaluate.paper_values)
    return out


def _lr_curves(sweep, table: pd.DataFrame) -> dict:
    """Figs. 2 and 3's numbers: how well the loss ranks the lrs by SSIM, overall and per curve."""
    if LR not in sweep.grid or len(table) < 3:
        return {}
    return {"spearman_final_loss_ssim": _spearman(table["final_loss"], table["ssim"]),
            "by_group": {label: _lr_group(rows) for label, rows in _groups(sweep, table)}}


def _seed_tables(sweep, table: pd.DataFrame, seeds: dict[str, dict]) -> dict[str, pd.DataFrame]:
    """The table as each attack seed's runs give it: a row per point, its numbers at that seed."""
    grid = table.set_index("run")[list(sweep.grid)]
    first = next(iter(seeds.values()))
    return {seed: pd.DataFrame([{"run": run, **grid.loc[run].to_dict(), **seeds[run][seed]} for run in grid.index])
            for seed in first}


def _groups(sweep, table: pd.DataFrame):
    """The lr curves: one per combination of the grid's other settings."""
    others = [k for k in sweep.grid if k != LR]
    if not others:
        yield "all", table
        return
    for key, rows in table.groupby(others, sort=False):
        values = dict(zip(others, key if isinstance(key, tuple) else (key,)))
        yield point_name("", values).lstrip("_"), rows


def _lr_group(rows: pd.DataFrame) -> dict:
    best = rows.loc[rows["ssim"].idxmax()]
    out = {
        "spearman_final_loss_ssim": _spearman(rows["final_loss"], rows["ssim"]),
        "spearman_probe_loss_ssim": _spearman(rows["probe_loss"], rows["ssim"]),
        "probe_pick_lr": None, "probe_pick_ssim": None,
        "best_lr": float(best[LR]), "best_ssim": float(best["ssim"]),
    }
    if rows["probe_loss"].notna().any():  # none where the runs are shorter than the probe
        pick = rows.loc[rows["probe_loss"].idxmin()]
        out |= {"probe_pick_lr": float(pick[LR]), "probe_pick_ssim": float(pick["ssim"])}
    return out


def _spearman(a: pd.Series, b: pd.Series) -> float | None:
    ok = a.notna() & b.notna()
    if ok.sum() < 3:
        return None
    return float(spearmanr(a[ok], b[ok]).statistic)


def write_sweep(cfg: ExperimentConfig, victim_dir, reconstruct_root, evaluate_root, out_dir, metrics_out) -> dict:
    """The sweep-report stage: `sweep.csv`, `sweep.png` and the sweep's metrics (DVC metrics)."""
    if cfg.reconstruct.sweep is None:
        raise SimudyError(f"experiment {cfg.name!r} at profile {cfg.profile!r} has no reconstruct.sweep")
    out_dir = Path(out_dir)
    _, results = load_results(cfg, victim_dir, reconstruct_root, evaluate_root)
    runs = run_numbers(cfg, results)
    table = sweep_table(cfg, runs)
    with atomic_path(out_dir / "sweep.csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    metrics = sweep_metrics(cfg, table, seed_numbers(cfg, runs))
    write_json(metrics_out, metrics)
    title = f"{cfg.title} [{cfg.profile} profile]"
    if LR in cfg.reconstruct.sweep.grid:
        lr_figure(out_dir / "sweep.png", cfg.reconstruct.sweep, table, metrics, title)
    else:
        runs_figure(out_dir / "sweep.png", table, {r.name: r for r in results}, title, cfg.evaluate.paper_values)
    return metrics


def lr_figure(path: Path, sweep, table: pd.DataFrame, metrics: dict, title: str) -> None:
    """Figs. 2 and 3: against the simulation lr, the final loss (top row) and the loss after the
    probe (bottom row), each in blue on its own scale, with the final SSIM in red; a column per
    value of the other settings; the star is the probe's pick; black bars, where the points are
    repeated over attack seeds, the SSIM's mean ± sd over them."""
    groups = list(_groups(sweep, table))
    fig, axes = plt.subplots(2, len(groups), figsize=(max(6.0, 4.6 * len(groups)), 6.6), squeeze=False, sharex="col")
    for col, (label, rows) in enumerate(groups):
        rows = rows.sort_values(LR)
        stats = metrics["by_group"][label]
        for row, (loss, name, key, style) in enumerate((
                ("final_loss", "final loss", "spearman_final_loss_ssim", "o-"),
                ("probe_loss", "loss after the probe", "spearman_probe_loss_ssim", "s--"))):
            ax = axes[row, col]
            ax.plot(rows[LR], rows[loss], style, color="tab:blue", label=name)
            ax.set_ylabel(name, color="tab:blue")
            right = ax.twinx()
            right.plot(rows[LR], rows["ssim"], "o-", color="tab:red", label="final SSIM")
            if "ssim_seed_mean" in rows:
                right.errorbar(rows[LR], rows["ssim_seed_mean"], rows["ssim_seed_sd"], fmt="o", color="k", ms=3,
                               capsize=3, label=f"mean ± sd over {int(rows['n_seeds'].max())} attack seeds")
            if stats["probe_pick_lr"] is not None:
                right.plot([stats["probe_pick_lr"]], [stats["probe_pick_ssim"]], "*", color="k", ms=12,
                           label="the probe's pick")
            right.set_ylabel("mean SSIM", color="tab:red")
            ax.set_title(f"{label}: ρ({name}, SSIM) {_fmt(stats[key])}", fontsize=8)
            ax.grid(alpha=0.3)
        bottom = axes[1, col]
        bottom.set_xscale("log")
        bottom.set_xticks(rows[LR], [f"{v:g}" for v in rows[LR]], rotation=45, fontsize=7)
        bottom.xaxis.set_minor_formatter(NullFormatter())
        bottom.set_xlabel("simulation learning rate")
    # One legend for all panels, below them: the loss lines are the blue ones, named on each axis.
    handles = [axes[0, 0].lines[0], axes[1, 0].lines[0], *fig.axes[-1].get_legend_handles_labels()[0]]
    ncol = len(handles) if len(groups) > 1 or len(handles) <= 4 else 3  # one column of panels holds four
    fig.legend(handles, [h.get_label() for h in handles], loc="lower center", ncol=ncol, fontsize=8)
    fig.suptitle(textwrap.fill(title, int(12 * fig.get_figwidth())), fontsize=9)
    fig.tight_layout(rect=(0, 0.05 * -(-len(handles) // ncol), 1, 1))
    save_figure(fig, path)


def runs_figure(path: Path, table: pd.DataFrame, runs: dict, title: str, paper: dict) -> None:
    """Each run's loss curve, its SSIM, and (where measured) its dummies' contributions,
    matched against unmatched (Sec. 4.5)."""
    contributions = "contribution_matched_mean" in table
    fig, axes = plt.subplots(1, 3 if contributions else 2, figsize=(13 if contributions else 9, 3.8))
    for name in table["run"]:
        axes[0].plot(runs[name].loss["step"], runs[name].loss["loss"], lw=0.8, label=name)
    if "final_loss" in paper:
        axes[0].axhline(paper["final_loss"], color="k", ls=":", lw=0.8, label="the paper's final loss")
    axes[0].set(xlabel="step", ylabel="loss", yscale="log", title="loss")
    axes[0].legend(fontsize=6)
    x = np.arange(len(table))
    axes[1].bar(x - 0.2, table["ssim"], 0.4, label="mean over training images")
    axes[1].bar(x + 0.2, table["ssim_matched"], 0.4, label="mean over pairs")
    if "ssim_seed_mean" in table:
        axes[1].errorbar(x - 0.2, table["ssim_seed_mean"], table["ssim_seed_sd"], fmt="o", color="k", ms=3,
                         capsize=3, label=f"mean ± sd over {int(table['n_seeds'].max())} attack seeds")
    axes[1].set_xticks(x, table["run"], rotation=30, ha="right", fontsize=7)
    axes[1].set(ylabel="SSIM (paper protocol)", title="SSIM", ylim=(0, 1.2))  # headroom for the legend
    axes[1].legend(fontsize=7, loc="upper center", ncol=2)
    if contributions:
        _contribution_panel(axes[2], table, runs, paper)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def _contribution_panel(ax, table: pd.DataFrame, runs: dict, paper: dict) -> None:
    for k, name in enumerate(table["run"]):
        dummies = runs[name].dummies
        for matched, colour, shift in ((True, "tab:green", -0.12), (False, "tab:grey", 0.12)):
            values = dummies.loc[dummies["matched"] == matched, "contribution"]
            ax.plot(np.full(len(values), k + shift), values, "o", ms=3, color=colour, alpha=0.6,
                    label=("matched" if matched else "unmatched") if k == 0 else None)
    # Norms depend on the model and the data; their ratio is what compares with the paper.
    ours = ", ".join(f"{r}: {v:.2f}" for r, v in zip(table["run"], table.get("contribution_ratio", [])) if v == v)
    theirs = paper.get("contribution_matched_mean", np.nan) / paper.get("contribution_unmatched_mean", np.nan)
    ax.set_xticks(range(len(table)), table["run"], rotation=30, ha="right", fontsize=7)
    ax.set(ylabel="total-gradient norm")
    ax.set_title(f"dummies' contributions; matched/unmatched mean\n{ours or 'n/a'}"
                 + ("" if theirs != theirs else f" (paper {theirs:.2f})"), fontsize=8)
    ax.legend(fontsize=7)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f}"
