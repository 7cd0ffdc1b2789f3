"""`simudy <stage>`: one subcommand per pipeline stage. The pipeline rules only call these."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from simudy import checkpoints, data, pairing, report, train
from simudy.attacks import ThreatModel, get_attack
from simudy.config import DEFAULT_REGISTRY, ExperimentConfig, load_experiment, load_registry
from simudy.errors import SimudyError
from simudy.io import atomic_path, read_json, write_json
from simudy.models import build_model
from simudy.victim import META_SCHEMA, build_from_meta, load_victim

log = logging.getLogger("simudy")


# -- stages -----------------------------------------------------------------------------------


def cmd_fetch_data(a) -> None:
    reg = load_registry(a.registry)
    if a.dataset not in reg.datasets:
        raise SimudyError(f"{a.registry}: unknown dataset {a.dataset!r}; known: {sorted(reg.datasets)}")
    ds = data.fetch(a.dataset, reg.datasets[a.dataset], a.out)
    for split in data.SPLITS:
        log.info("%s: %s split: %d images of shape %s in %d classes", a.out, split, int((ds.split == split).sum()),
                 ds.images.shape[1:], len(ds.class_names))


def cmd_pretrain(a) -> None:
    cfg = _experiment(a)
    ds = data.load_dataset(a.data, split=cfg.init.split)
    torch.manual_seed(cfg.init.seed)
    model = build_model(cfg.init.arch, ds.image_shape, len(ds.class_names), **_model_kwargs(cfg))
    info = {"schema": META_SCHEMA, "arch": cfg.init.arch, "model_kwargs": _model_kwargs(cfg),
            "image_shape": list(ds.image_shape), "num_classes": len(ds.class_names), "init": cfg.section("init")}
    if cfg.init.init == "pretrained":
        n = min(cfg.init.limit or len(ds), len(ds))
        idx = np.arange(n)
        labels = torch.from_numpy(ds.labels[idx])
        info["pretrain_accuracy"] = train.pretrain(model, ds.normalised(idx), labels, cfg.init)
        info["pretrain_images"] = {"split": cfg.init.split, "count": n}
    out = Path(a.out_dir)
    checkpoints.save_weights(out / "theta0.safetensors", model.state_dict())
    write_json(out / "init.json", info)


def cmd_finetune_victim(a) -> None:
    cfg = _experiment(a)
    ds = data.load_dataset(a.data, split="train")
    init_dir, out = Path(a.init_dir), Path(a.out_dir)
    info = read_json(init_dir / "init.json")
    model = checkpoints.load_into(build_from_meta(info), checkpoints.load_weights(init_dir / "theta0.safetensors"),
                                  init_dir / "theta0.safetensors")
    idx = data.select_subset(ds.labels, cfg.victim.per_class, cfg.victim.offset, len(ds.class_names))
    x, y = ds.normalised(idx), torch.from_numpy(ds.labels[idx])
    theta0 = {k: v.clone() for k, v in model.state_dict().items()}
    losses = train.finetune(model, x, y, cfg.victim)
    meta = {**{k: info[k] for k in ("schema", "arch", "model_kwargs", "image_shape", "num_classes")},
            "class_names": ds.class_names, "mean": ds.mean.tolist(), "std": ds.std.tolist(),
            "n_images": len(idx),
            "training": {"epochs": cfg.victim.epochs, "batch_size": cfg.victim.batch_size, "lr": cfg.victim.lr,
                         "optimizer": "sgd", "momentum": 0.0, "weight_decay": 0.0, "shuffle": False,
                         "model_mode": "eval", "loss": "cross_entropy"},
            "subset": {"dataset": cfg.dataset, "split": "train", "per_class": cfg.victim.per_class,
                       "offset": cfg.victim.offset, "indices": idx.tolist(),
                       "source_ids": ds.source_ids[idx].tolist()},
            "init": info["init"], "epoch_losses": losses}
    checkpoints.save_weights(out / "theta0.safetensors", theta0)
    checkpoints.save_weights(out / "thetaf.safetensors", model.state_dict())
    data.save_dataset(out / "truth.npz", ds.take(idx))
    write_json(out / "victim.json", meta)


def cmd_reconstruct(a) -> None:
    cfg = _experiment(a)
    victim = load_victim(a.victim_dir)
    attack = get_attack(cfg.reconstruct)
    out = Path(a.out_dir)
    result = attack.run(victim, ThreatModel.from_victim(victim), Path(a.work_dir))
    rows = result.info.pop("loss_rows")
    with atomic_path(out / "loss.csv") as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["step"])
        w.writeheader()
        w.writerows(rows)
    tensors = {"images": result.images}
    if result.labels is not None:
        tensors["labels"] = result.labels
    checkpoints.save_weights(out / "reconstruction.safetensors", tensors)
    write_json(out / "run.json", {"attack": attack.name, **result.info, "seconds_per_step":
                                  result.info["seconds"] / max(1, result.info["steps"])})


def cmd_pair(a) -> None:
    truth = data.load_dataset(Path(a.victim_dir) / "truth.npz")
    recon = checkpoints.load_weights(Path(a.reconstruct_dir) / "reconstruction.safetensors")["images"]
    metrics, pairs = pairing.evaluate(truth.normalised(), recon, truth.mean, truth.std)
    pairs.insert(1, "source_id", truth.source_ids[pairs["train"]])
    pairs.insert(2, "label", [truth.class_names[i] for i in truth.labels[pairs["train"]]])
    out = Path(a.out_dir)
    with atomic_path(out / "pairs.csv") as tmp:
        pairs.to_csv(tmp, index=False, float_format="%.6f")
    write_json(out / "metrics.json", metrics)
    log.info("mean SSIM (paper protocol) %.4f, pixel SSIM %.4f, PSNR %.2f dB",
             metrics["ssim"], metrics["ssim_pixel"], metrics["psnr_pixel"])


def cmd_report(a) -> None:
    cfg = _experiment(a)
    truth = data.load_dataset(Path(a.victim_dir) / "truth.npz")
    rec_dir, ev_dir, out = Path(a.reconstruct_dir), Path(a.evaluate_dir), Path(a.out_dir)
    recon = checkpoints.load_weights(rec_dir / "reconstruction.safetensors")["images"]
    run, metrics = read_json(rec_dir / "run.json"), read_json(ev_dir / "metrics.json")
    pairs = pd.read_csv(ev_dir / "pairs.csv")
    px = lambda x: pairing.to_pixels(pairing.channels_last(x), truth.mean, truth.std)  # noqa: E731
    paper = ""
    if cfg.evaluate.paper_ssim is not None:
        scale = "" if cfg.profile == "paper" else " at paper scale"
        paper = f"; the paper reports {cfg.evaluate.paper_ssim:.4f}{scale}"
    title = (f"{cfg.title} [{run['attack']}, {cfg.profile} profile]\n"
             f"mean SSIM {metrics['ssim']:.4f} over {metrics['n_train']} images{paper}")
    report.reconstruction_figure(out / "figure.png", px(recon), px(truth.normalised()), pairs, title,
                                 cfg.evaluate.show, cfg.evaluate.columns)
    report.loss_figure(out / "loss.png", pd.read_csv(rec_dir / "loss.csv"), f"{cfg.title} [{cfg.profile}]")
    row = pd.DataFrame([{
        "experiment": cfg.name, "profile": cfg.profile, "attack": run["attack"], "model": cfg.init.arch,
        "n_images": metrics["n_train"], "steps": run["steps"], "ssim": metrics["ssim"],
        "paper_ssim": cfg.evaluate.paper_ssim, "paper_ref": cfg.evaluate.paper_ref,
        "ssim_hungarian": metrics["ssim_hungarian"], "ssim_pixel": metrics["ssim_pixel"],
        "psnr_pixel": metrics["psnr_pixel"], "seconds": run["seconds"],
        "seconds_per_step": run["seconds_per_step"],
    }])
    with atomic_path(out / "row.csv") as tmp:
        row.to_csv(tmp, index=False)


def cmd_table(a) -> None:
    report.write_table([pd.read_csv(p) for p in a.rows], a.out)


def cmd_show_config(a) -> None:
    print(json.dumps(_experiment(a).model_dump(), indent=2))


def cmd_import_checkpoint(a) -> None:
    n = checkpoints.import_torch_checkpoint(a.src, a.dst)
    log.info("wrote %d tensors to %s", n, a.dst)


# -- plumbing ---------------------------------------------------------------------------------


def _experiment(a) -> ExperimentConfig:
    return load_experiment(a.experiment, a.profile, a.registry)


def _model_kwargs(cfg: ExperimentConfig) -> dict:
    return {k: v for k, v in {"width": cfg.init.width, "hidden": cfg.init.hidden}.items() if v is not None}


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
        for flag, h in paths.items():
            s.add_argument(f"--{flag.replace('_', '-')}", required=True, help=h)
        return s

    add("fetch-data", cmd_fetch_data, "write the canonical dataset file", experiment=False,
        dataset="dataset name in the registry", out="output .npz")
    add("pretrain", cmd_pretrain, "make θ0 (pre-trained or seeded random init)",
        data="canonical dataset file", out_dir="output directory")
    add("finetune-victim", cmd_finetune_victim, "train the victim from θ0 with the authors' protocol",
        data="canonical dataset file", init_dir="θ0 directory", out_dir="victim directory")
    add("reconstruct", cmd_reconstruct, "run the configured attack on a victim",
        victim_dir="victim directory", out_dir="output directory", work_dir="snapshot directory (resume)")
    add("pair", cmd_pair, "pair reconstructions with training images by SSIM", experiment=False,
        victim_dir="victim directory", reconstruct_dir="reconstruction directory", out_dir="output directory")
    add("report", cmd_report, "figures and the results table row", victim_dir="victim directory",
        reconstruct_dir="reconstruction directory", evaluate_dir="evaluation directory", out_dir="output directory")
    t = add("table", cmd_table, "collect table rows into a markdown table", experiment=False, out="output .md")
    t.add_argument("rows", nargs="+")
    add("show-config", cmd_show_config, "print an experiment's effective configuration")
    c = add("import-checkpoint", cmd_import_checkpoint, "convert a torch checkpoint to safetensors", experiment=False)
    c.add_argument("src")
    c.add_argument("dst")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if a.log:
        Path(a.log).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(a.log))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", handlers=handlers, force=True)
    started = time.perf_counter()
    try:
        a.fn(a)
    except SimudyError as err:
        log.error("error: %s", err)
        return 2
    log.info("%s done in %.1f s", a.command, time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
