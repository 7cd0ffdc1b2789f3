"""The pipeline as users drive it through Snakemake: lint, dry runs, a tiny end-to-end run
(DVC: tests/test_dvc.py)."""

import hashlib
import json
import os
from pathlib import Path

import pytest
import yaml

from simudy.config import load_registry
from simudy.data import load_dataset
from tests.conftest import ROOT, copy_pipeline, run_tool, tool

pytestmark = pytest.mark.slow


def _env():
    path = f"{Path(tool('snakemake')).parent}{os.pathsep}{os.environ['PATH']}"
    return {**os.environ, "PATH": path, "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "1"}


def _digits_only(root: Path, profile: str) -> None:
    """Keep only the digits demo (the CIFAR experiments need the CIFAR-10 files)."""
    path = root / "params/experiments.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["active_profile"] = profile
    raw["experiments"] = {"demo": raw["experiments"]["demo"]}
    raw["groups"] = {}
    raw["ablations"] = {}
    raw["linearity"] = {}
    raw["datasets"] = {"digits": raw["datasets"]["digits"]}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def test_lint_is_clean():
    proc = run_tool(ROOT, "snakemake", "--lint", check=False, env=_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dry_run_of_every_experiment_at_every_profile(tmp_path):
    copy_pipeline(tmp_path)
    reg = load_registry(ROOT / "params/experiments.yaml")
    targets = [f"results/{e}/{p}/report/rows.csv" for e, entry in reg.experiments.items() for p in entry.profiles]
    runs = sum(len(reg.resolve(e, p).reconstruct.runs()) for e in reg.experiments for p in reg.experiments[e].profiles)
    proc = run_tool(tmp_path, "snakemake", "-n", "--cores", "all", *targets, env=_env())
    out = proc.stdout + proc.stderr
    assert "Using workflow specific profile profiles/default" in out
    victims = {(cfg.victim_experiment, cfg.victim_profile)
               for cfg in (reg.resolve(e, p) for e, entry in reg.experiments.items() for p in entry.profiles)}
    for rule in ["pretrain", "finetune_victim"]:  # experiments and profiles with `victim_of` share a victim
        assert out.count(f"rule {rule}:") == len(victims) < len(targets), rule
    assert out.count("rule report:") == len(targets)
    for rule in ["simulate_and_reconstruct", "pair_by_ssim"]:  # once per run (a sweep: per grid point)
        assert out.count(f"rule {rule}:") == runs, rule
    assert out.count("rule fetch_data:") == len(reg.datasets)
    # GPU jobs declare gpu=1 and the default profile caps the run at one GPU.
    assert "gpu=1" in out
    assert yaml.safe_load((ROOT / "profiles/default/config.yaml").read_text())["resources"] == ["gpu=1"]


def test_tiny_end_to_end_run(tmp_path):
    copy_pipeline(tmp_path)
    _digits_only(tmp_path, "smoke")
    run_tool(tmp_path, "snakemake", "demo", "tables", "--cores", "2", env=_env())
    run = tmp_path / "results/demo/smoke"
    metrics = json.loads((run / "metrics.json").read_text())["simudy"]
    assert metrics["n_train"] == 20 and 0 < metrics["ssim"] <= 1
    assert (run / "report/figure.png").stat().st_size > 10_000
    assert (run / "report/methods/simudy.png").stat().st_size > 10_000
    assert "| demo " in (tmp_path / "results/table_smoke.md").read_text()
    assert (run / "logs/reconstruct_simudy.log").read_text().count("step ") >= 2
    # Nothing left to do on a second run.
    proc = run_tool(tmp_path, "snakemake", "demo", "--cores", "2", "-n", env=_env())
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_paths_with_spaces_and_set_overrides(tmp_path):
    """Every path in the rules is quoted (a checkout and a registry under folders with spaces),
    and `--config set=[...]` reaches the jobs that read the experiment's settings."""
    (tmp_path / "my checkout").mkdir()
    root = copy_pipeline(tmp_path / "my checkout")
    _digits_only(root, "smoke")
    (root / "my params").mkdir()
    (root / "params/experiments.yaml").rename(root / "my params/experiments.yaml")
    target = "results/demo/smoke/reconstruct/simudy/run.json"
    config = ["--config", "registry=my params/experiments.yaml", 'set=["reconstruct.attacks.simudy.steps=4"]']
    run_tool(root, "snakemake", target, "--cores", "2", *config, env=_env())
    assert json.loads((root / target).read_text())["steps"] == 4
    # The override is among the job's params: without it the reconstruction is out of date.
    proc = run_tool(root, "snakemake", "-n", target, "--cores", "2", *config[:2], env=_env())
    assert "rule simulate_and_reconstruct:" in proc.stdout + proc.stderr


def _image_zip(path: Path, value: int) -> Path:
    from io import BytesIO
    from zipfile import ZipFile

    from PIL import Image

    with ZipFile(path, "w") as zf:
        for split in ("train", "test"):
            for cls in ("a", "b"):
                buf = BytesIO()
                Image.new("L", (8, 8), value + ord(cls)).save(buf, "PNG")
                zf.writestr(f"root/{split}/{cls}/0.png", buf.getvalue())
    return path


def test_another_copy_of_the_data_rebuilds_the_dataset(tmp_path):
    root = copy_pipeline(tmp_path)
    _digits_only(root, "smoke")
    path = root / "params/experiments.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["datasets"]["toy"] = {"source": "imagefolder"}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    target = "results/data/toy.npz"
    first = {**_env(), "SIMUDY_DATA_TOY": str(_image_zip(tmp_path / "one.zip", 10))}
    run_tool(root, "snakemake", target, "--cores", "1", env=first)
    again = run_tool(root, "snakemake", "-n", target, "--cores", "1", env=first)
    assert "Nothing to be done" in again.stdout + again.stderr
    second = {**first, "SIMUDY_DATA_TOY": str(_image_zip(tmp_path / "two.zip", 20))}
    rerun = run_tool(root, "snakemake", target, "--cores", "1", env=second)
    assert "rule fetch_data:" in rerun.stdout + rerun.stderr
    assert load_dataset(root / target).images.min() == 20 + ord("a")
    record = json.loads((root / "results/data/toy.source.json").read_text())
    assert record["md5"] == hashlib.md5((tmp_path / "two.zip").read_bytes()).hexdigest()
