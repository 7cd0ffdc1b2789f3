"""Figures and tables: the methods side by side, the paper's Fig. 1 layout per method, loss
curves, and results table rows; for text, the sentence table of Tab. 2."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from simudy.checkpoints import load_weights  # noqa: E402
from simudy.config import ExperimentConfig  # noqa: E402
from simudy.data import load_dataset  # noqa: E402
from simudy.io import atomic_path, read_json, save_figure, write_json  # noqa: E402
from simudy.pairing import channels_last, progress_monitor, to_pixels  # noqa: E402
from simudy.text import is_text_dataset  # noqa: E402

ROW_COLUMNS = ["experiment", "profile", "method", "attack", "model", "n_images", "n_recon", "steps", "ssim",
               "paper_ssim", "paper_ref", "ssim_hungarian", "ssim_pixel", "psnr_pixel", "frac_ssim_ge_0.4", "seconds",
               "seconds_per_step"]

TEXT_COLUMNS = ["rouge1", "rouge2", "rouge1_initial"]


@dataclass
class MethodResult:
    name: str
    recon_px: np.ndarray  # channels-last [0, 1] pixels
    pairs: pd.DataFrame
    loss: pd.DataFrame
    run: dict
    metrics: dict
    dummies: pd.DataFrame  # every reconstruction, paired or not
    history: tuple[np.ndarray, np.ndarray] | None = None  # (steps [k], pixels [k, n, H, W, C]) if kept
    curve: pd.DataFrame | None = None  # step, seconds, ssim of the kept images, if kept


def make_report(cfg: ExperimentConfig, victim_dir, reconstruct_root, evaluate_root, out_dir,
                metrics_out) -> pd.DataFrame:
    """The report stage, over all of the experiment's methods: `figure.png` (the training images
    above each method's matched reconstruction, as in the paper's comparison figures),
    `methods/<method>.png` (Fig. 1 layout), `loss.png`, `rows.csv` (a table row per method) and the
    experiment's `metrics.json` (per method; DVC metrics)."""
    out_dir = Path(out_dir)
    if is_text_dataset(Path(victim_dir) / "truth.npz"):
        return sentence_report(cfg, reconstruct_root, evaluate_root, out_dir, metrics_out)
    train_px, every = load_results(cfg, victim_dir, reconstruct_root, evaluate_root)
    by_name = {r.name: r for r in every}
    results = [by_name[run] for run in cfg.reconstruct.primary_runs()]
    seeds = {r.name: _seeds(cfg, r, by_name) for r in results}
    for r in results:
        reconstruction_figure(out_dir / "methods" / f"{r.name}.png", r.recon_px, train_px, r.pairs,
                              _title(cfg, r, seeds[r.name]), cfg.evaluate.show, cfg.evaluate.columns)
        if r.history is not None:
            history_figure(out_dir / "methods" / f"{r.name}_over_time.png", r, train_px,
                           f"{cfg.title} [{r.name}, {cfg.profile} profile]: the reconstruction over time",
                           cfg.evaluate.columns)
    comparison_figure(out_dir / "figure.png", train_px, results, f"{cfg.title} [{cfg.profile} profile]",
                      cfg.evaluate.show, cfg.evaluate.columns)
    loss_figure(out_dir / "loss.png", results, f"{cfg.title} [{cfg.profile}]")
    rows = pd.DataFrame([_row(cfg, r) for r in results])[ROW_COLUMNS]
    with atomic_path(out_dir / "rows.csv") as tmp:
        rows.to_csv(tmp, index=False)
    write_json(metrics_out, {r.name: {**r.metrics, **_convergence(cfg, r, results), **_seed_metrics(seeds[r.name])}
                             for r in results})
    return rows


def _seeds(cfg: ExperimentConfig, r: MethodResult, by_name: dict[str, MethodResult]) -> dict[int, dict]:
    """Each seed's metrics, where the run is repeated over attack seeds (else {})."""
    return {seed: by_name[run].metrics for seed, run in cfg.reconstruct.repeats(r.name).items()}


def _seed_metrics(seeds: dict[int, dict]) -> dict:
    """Under `seeds`, each seed's metrics (the table's mean ± sd reads them)."""
    return {"seeds": {str(seed): m for seed, m in seeds.items()}} if seeds else {}


def _convergence(cfg: ExperimentConfig, r: MethodResult, results: list[MethodResult]) -> dict:
    """For a run whose images were kept over time: its SSIM curve, how much its loss still fell
    over the last quarter of the run (near 0: a plateau), and its SSIM at the wall time of
    `evaluate.time_reference`'s whole run (equal time, where that run is another)."""
    if r.curve is None:
        return {}
    loss = r.loss["loss"].to_numpy()
    late = loss[(3 * len(loss)) // 4]
    out = {"curve": r.curve.round(5).to_dict(orient="list"),
           "loss_drop_last_quarter": float((late - loss[-1]) / abs(late)) if late else None}
    ref = next((x for x in results if x.name == cfg.evaluate.time_reference), None)
    if ref is not None:
        budget = float(ref.run["seconds"])
        within = r.curve[r.curve["seconds"] <= budget + 1e-9]
        out[f"ssim_at_{ref.name}_seconds"] = float(within["ssim"].iloc[-1])
        out["reference_seconds"] = budget
    return out


def load_results(cfg: ExperimentConfig, victim_dir, reconstruct_root, evaluate_root) -> tuple[np.ndarray, list]:
    """The training images (channels-last [0, 1] pixels) and every run's MethodResult."""
    truth = load_dataset(Path(victim_dir) / "truth.npz")
    pixels = lambda x: to_pixels(channels_last(x), truth.mean, truth.std)  # noqa: E731
    score = progress_monitor(truth)
    runs = cfg.reconstruct.runs()
    return pixels(truth.normalised()), [_load(m, Path(reconstruct_root) / m, Path(evaluate_root) / m, pixels, score)
                                        for m in runs]


def _load(method: str, rec_dir: Path, ev_dir: Path, pixels, score) -> MethodResult:
    saved = load_weights(rec_dir / "reconstruction.safetensors")
    r = MethodResult(method, pixels(saved["images"]), pd.read_csv(ev_dir / "pairs.csv"),
                     pd.read_csv(rec_dir / "loss.csv"), read_json(rec_dir / "run.json"),
                     read_json(ev_dir / "metrics.json"), pd.read_csv(ev_dir / "dummies.csv"))
    if "history" in saved:
        steps = saved["history_steps"].tolist()
        r.history = (np.array(steps), np.stack([pixels(h) for h in saved["history"]]))
        seconds = r.loss.set_index("step")["seconds"]
        r.curve = pd.DataFrame({"step": steps, "seconds": [float(seconds.get(s, 0.0)) for s in steps],
                                "ssim": [score(h)["ssim"] for h in saved["history"]]})
    return r


def _row(cfg: ExperimentConfig, r: MethodResult) -> dict:
    m, run = r.metrics, r.run
    return {
        "experiment": cfg.name, "profile": cfg.profile, "method": r.name, "attack": run["attack"],
        "model": cfg.init.arch, "n_images": m["n_train"], "n_recon": m["n_recon"], "steps": run["steps"],
        "ssim": m["ssim"], "paper_ssim": cfg.evaluate.paper_ssim.get(r.name), "paper_ref": cfg.evaluate.paper_ref,
        "ssim_hungarian": m["ssim_hungarian"], "ssim_pixel": m["ssim_pixel"], "psnr_pixel": m["psnr_pixel"],
        "frac_ssim_ge_0.4": m["frac_ssim_ge_0.4"], "seconds": run["seconds"],
        "seconds_per_step": run["seconds_per_step"],
    }


def _title(cfg: ExperimentConfig, r: MethodResult, seeds: dict[int, dict]) -> str:
    paper = ""
    if r.name in cfg.evaluate.paper_ssim:
        scale = "" if cfg.profile == "paper" else " at paper scale"
        paper = f"; the paper reports {cfg.evaluate.paper_ssim[r.name]:.4f}{scale}"
    spread = ""
    if len(seeds) > 1:
        ssim = [m["ssim"] for m in seeds.values()]
        spread = f" (attack seed {cfg.reconstruct.method(r.name).seed}; over seeds {', '.join(map(str, seeds))}: " \
                 f"{np.mean(ssim):.4f} ± {np.std(ssim, ddof=1):.4f})"
    return (f"{cfg.title} [{r.name}, {cfg.profile} profile]\n"
            f"mean SSIM {r.metrics['ssim']:.4f} over {r.metrics['n_train']} images{spread}{paper}")


def _wrap(text: str, width_inches: float) -> str:
    """Break a title into lines that fit the figure (about 12 characters per inch at 9 pt)."""
    chars = max(12, int(12 * width_inches))
    return "\n".join(part for line in text.split("\n") for part in textwrap.wrap(line, chars))


def _suptitle(fig, heading: str) -> None:
    """The heading a fixed 0.08 inch below the top edge, so that it stays inside the space
    `_title_height` keeps free however tall the figure is."""
    fig.suptitle(heading, fontsize=9, y=1 - 0.08 / fig.get_figheight(), va="top")


def _title_height(heading: str) -> float:
    """Inches above the images for a 9 pt heading of that many lines."""
    return 0.25 + 0.17 * (heading.count("\n") + 1)


def comparison_figure(path, train_px: np.ndarray, results: list[MethodResult], title: str, show: int,
                      columns: int) -> None:
    """Training images (first row of each block) above every method's reconstruction matched to
    them, one row per method, captioned with its SSIM. Images are ordered by the first method's
    SSIM, best first."""
    order = results[0].pairs.sort_values("ssim", ascending=False)["train"].tolist()[:show]
    matched = [r.pairs.set_index("train") for r in results]
    blocks, rows = -(-len(order) // columns), 1 + len(results)
    ratios = ([1] * rows + [0.25]) * blocks
    summary = ", ".join(f"{r.name} {r.metrics['ssim']:.4f}" for r in results)
    width = 1.1 * columns + 1.2
    heading = _wrap(f"{title}\nmean SSIM: {summary}", width)
    fig, axes = plt.subplots(len(ratios) - 1, columns, figsize=(width, 1.15 * rows * blocks + _title_height(heading)),
                             squeeze=False, gridspec_kw={"height_ratios": ratios[:-1], "hspace": 0.2, "wspace": 0.05})
    for ax in axes.flat:
        ax.axis("off")
    for k, i in enumerate(order):
        b, c = divmod(k, columns)
        top = b * (rows + 1)
        _show(axes[top, c], train_px[i])
        for r, (res, pairs) in enumerate(zip(results, matched), start=1):
            if i in pairs.index:
                _show(axes[top + r, c], res.recon_px[int(pairs.loc[i, "recon"])])
                axes[top + r, c].set_title(f"{pairs.loc[i, 'ssim']:.2f}", fontsize=6, pad=1)
    for b in range(blocks):
        top = b * (rows + 1)
        for r, label in enumerate(["training", *(res.name for res in results)]):
            axes[top + r, 0].text(-0.1, 0.5, label, transform=axes[top + r, 0].transAxes, ha="right", va="center",
                                  fontsize=7)
    _suptitle(fig, heading)
    fig.subplots_adjust(left=1.2 / width, right=0.99, bottom=0.01, top=1 - _title_height(heading) / fig.get_figheight())
    save_figure(fig, path)


def reconstruction_figure(path, recon_px: np.ndarray, train_px: np.ndarray, pairs: pd.DataFrame,
                          title: str, show: int, columns: int) -> None:
    """Reconstructions (rows 1, 3, ...) above their matched training images (rows 2, 4, ...),
    best SSIM first, as in the paper's Fig. 1. Images are channels-last [0, 1] pixels."""
    top = pairs.sort_values("ssim", ascending=False).head(show)
    blocks = -(-len(top) // columns)
    # Each block is a row of reconstructions over a row of originals, then a thin spacer.
    ratios = ([1, 1, 0.25] * blocks)[:-1]
    heading = _wrap(title, 1.1 * columns)
    fig, axes = plt.subplots(len(ratios), columns, figsize=(1.1 * columns, 2.5 * blocks + _title_height(heading)),
                             squeeze=False,
                             gridspec_kw={"height_ratios": ratios, "hspace": 0.12, "wspace": 0.05})
    for ax in axes.flat:
        ax.axis("off")
    for k, row in enumerate(top.itertuples()):
        b, c = divmod(k, columns)
        _show(axes[3 * b, c], recon_px[row.recon])
        axes[3 * b, c].set_title(f"{row.ssim:.2f}", fontsize=7, pad=2)
        _show(axes[3 * b + 1, c], train_px[row.train])
    _suptitle(fig, heading)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - _title_height(heading) / fig.get_figheight())
    save_figure(fig, path)


def history_figure(path, r: MethodResult, train_px: np.ndarray, title: str, columns: int) -> None:
    """The best-paired dummies (columns, by their final SSIM) at each kept step (rows, the
    initial images first), above the training images they end up paired with (Fig. 8)."""
    steps, frames = r.history
    top = r.pairs.sort_values("ssim", ascending=False).head(columns)
    labels = [f"step {s}" for s in steps] + ["training"]
    heading = _wrap(title, 1.1 * columns + 1.0)
    fig, axes = plt.subplots(len(labels), len(top), squeeze=False,
                             figsize=(1.1 * len(top) + 1.0, 1.15 * len(labels) + _title_height(heading)),
                             gridspec_kw={"hspace": 0.1, "wspace": 0.05})
    for ax in axes.flat:
        ax.axis("off")
    for c, row in enumerate(top.itertuples()):
        for k in range(len(steps)):
            _show(axes[k, c], frames[k, row.recon])
        _show(axes[-1, c], train_px[row.train])
        axes[-1, c].set_title(f"{row.ssim:.2f}", fontsize=7, pad=2)
    for k, label in enumerate(labels):
        axes[k, 0].text(-0.1, 0.5, label, transform=axes[k, 0].transAxes, ha="right", va="center", fontsize=7)
    _suptitle(fig, heading)
    fig.subplots_adjust(left=1.0 / fig.get_figwidth(), right=0.99, bottom=0.01,
                        top=1 - _title_height(heading) / fig.get_figheight())
    save_figure(fig, path)


def _show(ax, img: np.ndarray) -> None:
    if img.shape[-1] == 1:
        ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(img, interpolation="nearest")


def loss_figure(path, results: list[MethodResult], title: str) -> None:
    """Each method's loss (and its parameter-matching term) against its steps; the methods'
    losses are on different scales, so each has its own panel."""
    columns = min(4, len(results))
    rows = -(-len(results) // columns)
    curves = [r for r in results if r.curve is not None]
    extra = 1 if curves else 0
    fig, axes = plt.subplots(rows + extra, max(columns, 2 * extra), figsize=(4.2 * max(columns, 2 * extra),
                             3.3 * (rows + extra)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    if curves:
        _ssim_panels(axes[-1, 0], axes[-1, 1], curves)
    for ax, r in zip(axes[:rows, :columns].flat, results):
        ax.axis("on")
        ax.plot(r.loss["step"], r.loss["loss"], lw=0.8, label="loss")
        if "distance" in r.loss:
            ax.plot(r.loss["step"], r.loss["distance"], lw=0.8, alpha=0.7, label="parameter distance")
        if (r.loss["loss"] > 0).all():
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(r.name, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def _ssim_panels(by_time, by_step, curves: list[MethodResult]) -> None:
    """Mean SSIM of the kept images against the optimisation time and against the steps."""
    for ax, x, label in ((by_time, "seconds", "optimisation time (s)"), (by_step, "step", "step")):
        ax.axis("on")
        for r in curves:
            ax.plot(r.curve[x], r.curve["ssim"], lw=1.0, marker=".", ms=3, label=r.name)
        ax.set_xlabel(label)
        ax.set_ylabel("mean SSIM (paper protocol)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)


def write_table(rows: list[pd.DataFrame], path, methods: list[str] | None = None) -> pd.DataFrame:
    """Collect table rows (only those of `methods`, if given) into one markdown table. The
    profile column says which scale produced each number: a `cpu` row is never a reproduction
    of the paper's value."""
    table = pd.concat(rows, ignore_index=True)
    table = table[ROW_COLUMNS + [c for c in TEXT_COLUMNS if c in table]]
    if methods:
        table = table[table["method"].isin(methods)]
    table = table.sort_values(["experiment", "profile", "method"])
    cells = table.astype(object).where(table.notna(), None)  # blank, not "nan", where the paper has no value
    text = "# Results\n\n" + cells.to_markdown(index=False, floatfmt=".4f", missingval="") + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return table


# -- text -------------------------------------------------------------------------------------


def sentence_report(cfg: ExperimentConfig, reconstruct_root, evaluate_root, out_dir: Path, metrics_out) -> pd.DataFrame:
    """The report for text: `methods/<run>.md` (original, initial and reconstructed sentences
    with their ROUGE, as Tab. 2), `figure.png` (those tables), `loss.png`, `rows.csv` and
    `metrics.json`."""
    results, tables = [], {}
    for run in cfg.reconstruct.primary_runs():
        rec, ev = Path(reconstruct_root) / run, Path(evaluate_root) / run
        r = MethodResult(run, np.empty(0), pd.read_csv(ev / "pairs.csv", keep_default_na=False),
                         pd.read_csv(rec / "loss.csv"), read_json(rec / "run.json"), read_json(ev / "metrics.json"),
                         pd.read_csv(ev / "dummies.csv"))
        results.append(r)
        tables[run] = r.pairs.sort_values("train")[["original", "initial", "reconstructed", "rouge1", "rouge2"]]
        with atomic_path(out_dir / "methods" / f"{run}.md") as tmp:
            tmp.write_text(f"# {cfg.title} [{run}, {cfg.profile} profile]\n\n"
                           + tables[run].to_markdown(index=False, floatfmt=".3f") + "\n")
    sentence_figure(out_dir / "figure.png", tables, f"{cfg.title} [{cfg.profile} profile]")
    loss_figure(out_dir / "loss.png", results, f"{cfg.title} [{cfg.profile}]")
    rows = pd.DataFrame([{
        "experiment": cfg.name, "profile": cfg.profile, "method": r.name, "attack": r.run["attack"],
        "model": cfg.init.arch, "n_images": r.metrics["n_train"], "n_recon": r.metrics["n_recon"],
        "steps": r.run["steps"], "paper_ref": cfg.evaluate.paper_ref, "seconds": r.run["seconds"],
        "seconds_per_step": r.run["seconds_per_step"], **{k: r.metrics[k] for k in TEXT_COLUMNS}}
        for r in results]).reindex(columns=ROW_COLUMNS + TEXT_COLUMNS)
    with atomic_path(out_dir / "rows.csv") as tmp:
        rows.to_csv(tmp, index=False)
    write_json(metrics_out, {r.name: r.metrics for r in results})
    return rows


def sentence_figure(path, tables: dict[str, pd.DataFrame], title: str) -> None:
    """Each run's sentences as a table: original, initial, reconstructed, ROUGE-1."""
    row_inches, head = 0.3, _title_height(title)
    heights = [row_inches * (len(t) + 2) for t in tables.values()]
    fig = plt.figure(figsize=(15, sum(heights) + head))
    top = sum(heights)
    for (run, table), height in zip(tables.items(), heights):
        top -= height
        ax = fig.add_axes((0.01, top / (sum(heights) + head), 0.98, height / (sum(heights) + head)))
        ax.axis("off")
        cells = [[*row[:3], f"{row[3]:.2f}"] for row in table.itertuples(index=False)]
        lines = len(cells) + 1  # and one line above the table for the run's name
        shown = ax.table(cellText=cells, colLabels=["Original", "Initial", "Reconstructed", "ROUGE-1"],
                         colWidths=[0.31, 0.31, 0.31, 0.07], bbox=(0, 0.02, 1, lines / (lines + 1) - 0.02),
                         cellLoc="left")
        shown.auto_set_font_size(False)
        shown.set_fontsize(8)
        ax.text(0, 1, f"{run}: mean ROUGE-1 {table['rouge1'].mean():.3f}", fontsize=9, va="top")
    _suptitle(fig, title)
    save_figure(fig, path)
