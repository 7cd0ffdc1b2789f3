"""`simudy <stage>`: one subcommand per pipeline stage. The pipeline rules only call these."""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import pandas as pd

from simudy import (
    ablation,
    bench,
    catalogue,
    checkpoints,
    data,
    describe,
    dvcstages,
    gpu,
    io,
    linearity,
    pairing,
    report,
    schema,
    sweep,
    text,
    train,
    victim,
)
from simudy.config import DEFAULT_REGISTRY, ExperimentConfig, load_experiment, load_registry
from simudy.errors import SimudyError
from simudy.reconstruct import reconstruct

log = logging.getLogger("simudy")


# -- stages -----------------------------------------------------------------------------------


def cmd_fetch_data(a) -> None:
    reg = load_registry(a.registry)
    if a.dataset not in reg.datasets:
        raise SimudyError(f"{a.registry}: unknown dataset {a.dataset!r}; known: {sorted(reg.datasets)}")
    if reg.datasets[a.dataset].source == "cola":
        sentences = text.fetch_cola(a.dataset, reg.datasets[a.dataset], a.out)
        log.info("%s: %d sentences (%d train) in %d classes", a.out, len(sentences.sentences),
                 int((sentences.split == "train").sum()), len(sentences.class_names))
        return
    ds = data.fetch(a.dataset, reg.datasets[a.dataset], a.out)
    for split in data.SPLITS:
        log.info("%s: %s split: %d images of shape %s in %d classes", a.out, split, int((ds.split == split).sum()),
                 ds.images.shape[1:], len(ds.class_names))


def cmd_data_source(a) -> None:
    reg = load_registry(a.registry)
    if a.dataset not in reg.datasets:
        raise SimudyError(f"{a.registry}: unknown dataset {a.dataset!r}; known: {sorted(reg.datasets)}")
    io.write_json(a.out, data.source_record(a.dataset, reg.datasets[a.dataset]))


def cmd_pretrain(a) -> None:
    train.make_theta0(_experiment(a), a.data, a.out_dir)


def cmd_finetune_victim(a) -> None:
    victim.make_victim(_experiment(a), a.data, a.init_dir, a.out_dir)


def cmd_reconstruct(a) -> None:
    # Wired here, not in simudy.reconstruct: the readout only logs, so a reconstruction does not
    # depend on pairing's code.
    truth = Path(a.victim_dir) / "truth.npz"
    monitor = None
    if truth.exists():
        from simudy import text_pairing  # rouge-score, for text only

        monitor = (text_pairing.progress_monitor(a.victim_dir) if text.is_text_dataset(truth)
                   else pairing.progress_monitor(data.load_dataset(truth)))
    info = reconstruct(_experiment(a).reconstruct, a.method, a.victim_dir, a.out_dir, a.work_dir, monitor,
                       a.natural_images)
    log.info("%s: %d steps in %.1f s (%.3f s/step) on %s", a.method, info["steps"], info["seconds"],
             info["seconds_per_step"], info["device"])
    if a.score_dir:
        if not truth.exists():
            raise SimudyError(f"{truth}: not found; --score-dir needs the training images (describe-victim --images)")
        _log_scores(_pair(a.victim_dir, a.out_dir, a.score_dir))


def cmd_pair(a) -> None:
    _log_scores(_pair(a.victim_dir, a.reconstruct_dir, a.out_dir))


def _pair(victim_dir, reconstruct_dir, out_dir) -> dict:
    """Pairing by the victim's input kind: sentences by ROUGE, images by SSIM."""
    if text.is_text_dataset(Path(victim_dir) / "truth.npz"):
        from simudy import text_pairing  # rouge-score, for text only

        return text_pairing.pair_files(victim_dir, reconstruct_dir, out_dir)
    return pairing.pair_files(victim_dir, reconstruct_dir, out_dir)


def _log_scores(m: dict) -> None:
    if "rouge1" in m:
        log.info("mean ROUGE-1 %.4f, ROUGE-2 %.4f (the initial dummies: ROUGE-1 %.4f)", m["rouge1"], m["rouge2"],
                 m["rouge1_initial"])
        return
    log.info("mean SSIM (paper protocol) %.4f, pixel SSIM %.4f, PSNR %.2f dB", m["ssim"], m["ssim_pixel"],
             m["psnr_pixel"])


def cmd_report(a) -> None:
    report.make_report(_experiment(a), a.victim_dir, a.reconstruct_root, a.evaluate_root, a.out_dir, a.metrics_out)


def cmd_sweep_report(a) -> None:
    sweep.write_sweep(_experiment(a), a.victim_dir, a.reconstruct_root, a.evaluate_root, a.out_dir, a.metrics_out)


def cmd_table(a) -> None:
    report.write_table([pd.read_csv(p) for p in a.rows], a.out, a.methods)


def cmd_catalogue(a) -> None:
    rows = catalogue.write_catalogue(load_registry(a.registry), a.catalogue, a.results, a.out_dir)
    log.info("wrote %s: %d experiments of the paper, %d not built", Path(a.out_dir) / "catalogue.md", len(rows),
             sum(r.status == catalogue.NOT_BUILT for r in rows))


def cmd_ablation_run(a) -> None:
    curve = ablation.run(load_registry(a.registry), a.ablation, a.run, a.victim_dir, a.out_dir, a.work_dir)
    last = curve.iloc[-1]
    log.info("%s / %s: mean SSIM %.4f after %.1f min (step %d)", a.ablation, a.run, last["ssim"],
             last["seconds"] / 60, last["step"])


def cmd_ablation_table(a) -> None:
    table = ablation.make_table(load_registry(a.registry), a.ablation, a.runs_root, a.out_dir)
    print(table.to_markdown(index=False, floatfmt=".3g"))


def cmd_linearity(a) -> None:
    table = linearity.run_table(load_registry(a.registry), a.table, a.profile, a.data, a.out_dir)
    print(table[["network", "width", "parameters", "m_lin", "paper", "difference", "seconds"]]
          .to_markdown(index=False, floatfmt=".4f"))


def cmd_gpu(a) -> None:
    records = gpu.run(load_registry(a.registry), a.profile, a.cores)
    failed = [r["step"] for r in records if r["status"] != "done"]
    if failed:
        raise SimudyError(f"gpu steps failed: {failed}; see results/gpu/{a.profile}/logs/")


def cmd_bench(a) -> None:
    table = bench.run_benchmark(a.settings, a.out_dir, a.only)
    print(table.to_markdown(index=False, floatfmt=".4g"))


def cmd_bench_projection(a) -> None:
    table = bench.write_projection(a.settings, a.bench, a.out_dir)
    log.info("wrote %s/projection.md (%d rows)", a.out_dir, len(table))


def cmd_bench_one(a) -> None:
    print(json.dumps(bench.measure_one(a.settings, a.case, a.mode, a.grad_out)))


def cmd_bench_precision(a) -> None:
    print(bench.run_precision_check(a.settings, a.out_dir).to_markdown(index=False, floatfmt=".3g"))


def cmd_show_config(a) -> None:
    print(json.dumps(_experiment(a).model_dump(), indent=2))


def cmd_dvc_yaml(a) -> None:
    dvcstages.write(Path(a.repo), Path(a.out))
    log.info("wrote %s", a.out)


def cmd_schema(a) -> None:
    schema.write(a.out)
    log.info("wrote %s", a.out)


def cmd_import_checkpoint(a) -> None:
    n = checkpoints.import_torch_checkpoint(a.src, a.dst)
    log.info("wrote %d tensors to %s", n, a.dst)


def cmd_import_victim(a) -> None:
    describe.import_victim(a.theta0, a.thetaf, a.victim_dir)
    log.info("wrote θ0 and θf to %s; describe the victim next (simudy describe-victim)", a.victim_dir)


def cmd_describe_victim(a) -> None:
    meta = describe.describe_victim(a.victim_dir, describe.flags(a), a.template, a.images)
    log.info("wrote %s: %s %s, %d images %s in %d classes%s", Path(a.victim_dir) / "victim.json", meta["arch"],
             meta.get("model_kwargs", {}), meta["n_images"], meta["image_shape"], meta["num_classes"],
             ", and truth.npz" if a.images else "")


# -- plumbing ---------------------------------------------------------------------------------


def _experiment(a) -> ExperimentConfig:
    return load_experiment(a.experiment, a.profile, a.registry, a.set)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="simudy", description=__doc__)
    p.add_argument("--log", help="also append the log to this file")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name, fn, help, experiment=True, **paths):
        s = sub.add_parser(name, help=help)
        s.set_defaults(fn=fn)
        s.add_argument("--registry", default=str(DEFAULT_REGISTRY), help="experiment registry (YAML)")
        if experiment:
            s.add_argument("--experiment", required=True)
            s.add_argument("--profile", required=True)
            s.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                           help="override one setting of the experiment (repeatable; the value is YAML), "
                                "e.g. reconstruct.attacks.simudy.steps=200")
        for flag, h in paths.items():
            s.add_argument(f"--{flag.replace('_', '-')}", required=True, help=h)
        return s

    add("fetch-data", cmd_fetch_data, "write the canonical dataset file", experiment=False,
        dataset="dataset name in the registry", out="output .npz")
    add("data-source", cmd_data_source, "record where a dataset's data comes from (rerun fetch-data when it changes)",
        experiment=False, dataset="dataset name in the registry", out="output .json")
    add("pretrain", cmd_pretrain, "make θ0 (pre-trained or seeded random init)",
        data="canonical dataset file", out_dir="output directory")
    add("finetune-victim", cmd_finetune_victim, "train the victim from θ0 with the authors' protocol",
        data="canonical dataset file", init_dir="θ0 directory", out_dir="victim directory")
    r = add("reconstruct", cmd_reconstruct, "run one of the experiment's attacks on a victim", method="method name",
            victim_dir="victim directory", out_dir="output directory", work_dir="snapshot directory (resume)")
    r.add_argument("--score-dir", help="then pair with the victim's truth.npz, as `simudy pair`, writing here")
    r.add_argument("--natural-images", help="dataset file whose test split the attack may start from "
                                             "(init_images: natural)")
    add("pair", cmd_pair, "pair reconstructions with training images by SSIM", experiment=False,
        victim_dir="victim directory", reconstruct_dir="reconstruction directory", out_dir="output directory")
    add("report", cmd_report, "figures, table rows and metrics over the experiment's methods",
        victim_dir="victim directory", reconstruct_root="folder of per-method reconstructions",
        evaluate_root="folder of per-method evaluations", out_dir="output directory", metrics_out="metrics .json")
    add("sweep-report", cmd_sweep_report, "a sweep's table, rank correlations and figure",
        victim_dir="victim directory", reconstruct_root="folder of per-run reconstructions",
        evaluate_root="folder of per-run evaluations", out_dir="output directory", metrics_out="metrics .json")
    t = add("table", cmd_table, "collect table rows into a markdown table", experiment=False, out="output .md")
    t.add_argument("--methods", nargs="+", help="keep only these methods' rows")
    t.add_argument("rows", nargs="+")
    add("catalogue", cmd_catalogue, "the paper's experiments, the paper's value beside ours (from committed metrics)",
        experiment=False, catalogue="catalogue file (params/catalogue.yaml)", results="results folder (read)",
        out_dir="output directory (catalogue.md, catalogue.csv)")
    r = add("ablation-run", cmd_ablation_run, "one run of an ablation and its SSIM-against-time curve",
            experiment=False, victim_dir="victim directory", out_dir="output directory",
            work_dir="snapshot directory (resume)")
    r.add_argument("--ablation", required=True)
    r.add_argument("--run", required=True)
    t = add("ablation-table", cmd_ablation_table, "an ablation's table and SSIM-against-time plot", experiment=False,
            runs_root="folder of the runs' outputs", out_dir="output directory")
    t.add_argument("--ablation", required=True)
    lin = add("linearity", cmd_linearity, "M_lin, the linearity of training dynamics, per network (App. A, Tab. 1)",
              experiment=False, data="canonical dataset file", out_dir="output directory")
    lin.add_argument("--profile", required=True, help="the table's profile (paper, cpu, smoke)")
    lin.add_argument("--table", help="the linearity table in the registry (default: the only one, tab1)")
    g = add("gpu", cmd_gpu, "fig1 and fig5 at paper scale and the GPU benchmark, in order", experiment=False)
    g.add_argument("--profile", default="paper", help="experiment profile (its `_fast` variant runs second)")
    g.add_argument("--cores", default="all", help="Snakemake --cores")
    b = add("bench", cmd_bench, "benchmark the simulator modes against the straightforward one", experiment=False,
            settings="benchmark settings (YAML)", out_dir="output directory")
    b.add_argument("--only", nargs="+", help="run only these cases")
    add("bench-projection", cmd_bench_projection, "a benchmark's cost cases projected to a full run (Tab. 3)",
        experiment=False, settings="benchmark settings (YAML)", bench="the suite's bench.csv",
        out_dir="output directory")
    o = add("bench-one", cmd_bench_one, "one (case, mode) measurement, printed as JSON", experiment=False,
            settings="benchmark settings (YAML)", case="case name", mode="mode name")
    o.add_argument("--grad-out", help="save the first step's loss and image gradient here")
    add("bench-precision", cmd_bench_precision, "float32 modes' image gradients against float64", experiment=False,
        settings="benchmark settings (YAML)", out_dir="output directory")
    add("show-config", cmd_show_config, "print an experiment's effective configuration")
    d = add("dvc-yaml", cmd_dvc_yaml, "write dvc.yaml from the Snakemake DAG (one stage per job)", experiment=False)
    d.add_argument("--repo", default=".", help="the checkout (Snakefile, params/)")
    d.add_argument("--out", default="dvc.yaml")
    s = add("schema", cmd_schema, "write the registry's JSON schema (for editors)", experiment=False)
    s.add_argument("--out", default="params/experiments.schema.json")
    c = add("import-checkpoint", cmd_import_checkpoint, "convert a torch checkpoint to safetensors", experiment=False)
    c.add_argument("src")
    c.add_argument("dst")
    add("import-victim", cmd_import_victim, "convert θ0 and θf saved with torch.save into a victim directory",
        experiment=False, theta0="the model before training (torch.save of its state_dict)",
        thetaf="the model after training", victim_dir="victim directory")
    v = add("describe-victim", cmd_describe_victim, "write victim.json (and truth.npz) for the checkpoints in a "
            "victim directory", experiment=False, victim_dir="victim directory (holding θ0 and θf)")
    v.description = describe.__doc__
    describe.add_arguments(v)
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    started = time.perf_counter()
    try:
        _setup_logging(a.log)
        io.clean_stale_temporaries()
        a.fn(a)
        log.info("%s done in %.1f s", a.command, time.perf_counter() - started)
    except SimudyError as err:
        return _fail(str(err))
    except KeyboardInterrupt:
        return _fail("interrupted", status=130)
    except Exception as err:  # the CLI boundary: no traceback reaches the user's terminal
        return _fail(_describe(err, _save_traceback(a.log)))
    return 0


class _StrictFileHandler(logging.FileHandler):
    """A log file that cannot be written (a full disk) fails the command instead of printing a
    warning and exiting 0."""

    def handleError(self, record: logging.LogRecord) -> None:
        raise SimudyError(f"{self.baseFilename}: cannot write the log ({sys.exc_info()[1]})")


def _setup_logging(path: str | None) -> None:
    for old in logging.root.handlers[:]:  # an earlier main() in this process (tests) may hold a broken file
        logging.root.removeHandler(old)
        with contextlib.suppress(OSError, SimudyError):
            old.close()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if path:
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            handlers.append(_StrictFileHandler(path))
        except OSError as err:
            raise SimudyError(f"{path}: cannot open the log file ({err.strerror})") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", handlers=handlers, force=True)


def _fail(message: str, status: int = 2) -> int:
    try:
        log.error("error: %s", message)
    except SimudyError:  # the log file itself failed: the terminal still gets the message
        print(f"error: {message}", file=sys.stderr)
    return status


def _save_traceback(log_path: str | None) -> str:
    """Append the traceback to the log file (or a temporary file without --log) and return where."""
    text = traceback.format_exc()
    for target in filter(None, [log_path, Path(tempfile.gettempdir()) / f"simudy-{os.getpid()}-traceback.log"]):
        try:
            with open(target, "a") as fh:
                fh.write(text)
            return str(target)
        except OSError:
            continue
    return "nowhere (no writable place)"


def _describe(err: Exception, where: str) -> str:
    """One line for an exception that is not a SimudyError."""
    if isinstance(err, OSError) and err.errno is not None:
        reason = "no space left on device" if err.errno == errno.ENOSPC else (err.strerror or str(err))
        return f"{err.filename or 'a file'}: {reason} (traceback in {where})"
    if isinstance(err, MemoryError):
        return f"out of memory (traceback in {where}); try smaller sizes or a bigger machine"
    text = " ".join(str(err).split())[:300]
    return f"unexpected {type(err).__name__}: {text} (a bug in simudy: please report it with the traceback in {where})"


if __name__ == "__main__":
    sys.exit(main())
