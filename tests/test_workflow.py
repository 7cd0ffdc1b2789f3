"""The pipeline as users drive it: Snakemake (lint, dry runs, a tiny end-to-end run) and DVC
(in a temporary git repository)."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from simudy.config import load_registry
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
    raw["datasets"] = {"digits": raw["datasets"]["digits"]}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def test_lint_is_clean():
    proc = run_tool(ROOT, "snakemake", "--lint", check=False, env=_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dry_run_of_every_experiment_at_every_profile(tmp_path):
    copy_pipeline(tmp_path)
    reg = load_registry(ROOT / "params/experiments.yaml")
    targets = [f"results/{e}/{p}/report/rows.csv" for e, entry in reg.experiments.items() for p in entry.profiles]
    runs = sum(len(reg.resolve(e, p).reconstruct.methods) for e in reg.experiments for p in reg.experiments[e].profiles)
    proc = run_tool(tmp_path, "snakemake", "-n", "--cores", "all", *targets, env=_env())
    out = proc.stdout + proc.stderr
    assert "Using workflow specific profile profiles/default" in out
    victims = {(e, reg.resolve(e, p).victim_profile) for e, entry in reg.experiments.items() for p in entry.profiles}
    for rule in ["pretrain", "finetune_victim"]:  # profiles with `victim_of` share a victim
        assert out.count(f"rule {rule}:") == len(victims) < len(targets), rule
    assert out.count("rule report:") == len(targets)
    for rule in ["simulate_and_reconstruct", "pair_by_ssim"]:  # once per method
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
    assert (run / "report/simudy.png").stat().st_size > 10_000
    assert "| demo " in (tmp_path / "results/table_smoke.md").read_text()
    assert (run / "logs/reconstruct_simudy.log").read_text().count("step ") >= 2
    # Nothing left to do on a second run.
    proc = run_tool(tmp_path, "snakemake", "demo", "--cores", "2", "-n", env=_env())
    assert "Nothing to be done" in proc.stdout + proc.stderr


def _git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_dvc_reruns_only_what_a_parameter_change_touches(tmp_path):
    copy_pipeline(tmp_path)
    _digits_only(tmp_path, "smoke")
    (tmp_path / "src/simudy").mkdir(parents=True)
    for f in (ROOT / "src/simudy").rglob("*.py"):  # the code files that stages depend on
        dst = tmp_path / "src/simudy" / f.relative_to(ROOT / "src/simudy")
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(f.read_text())
    # Here smoke is the versioned profile: its metrics are committed.
    ignore = (ROOT / ".gitignore").read_text().replace("/results/*/smoke/**\n", "")
    (tmp_path / ".gitignore").write_text(ignore)
    env = _env()
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "config", "user.email", "t@t")
    _git(tmp_path, "config", "user.name", "t")
    run_tool(tmp_path, "dvc", "init", "-q", env=env)
    run_tool(tmp_path, "dvc", "repro", env=env)
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "baseline")
    assert "up to date" in run_tool(tmp_path, "dvc", "status", env=env).stdout

    reg = tmp_path / "params/experiments.yaml"
    raw = yaml.safe_load(reg.read_text())
    raw["experiments"]["demo"]["profiles"]["smoke"]["reconstruct"]["attacks"]["simudy"]["tv_weight"] = 0.05
    reg.write_text(yaml.safe_dump(raw, sort_keys=False))
    status = run_tool(tmp_path, "dvc", "status", "--json", env=env).stdout
    assert list(json.loads(status)) == ["reconstruct@demo"]

    log = run_tool(tmp_path, "dvc", "repro", env=env).stdout
    assert "Running stage 'reconstruct@demo'" in log and "Running stage 'evaluate@demo'" in log
    for skipped in ["data@digits", "init@demo", "victim@demo"]:
        assert f"Running stage '{skipped}'" not in log
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "tv weight 0.05")

    params = json.loads(run_tool(tmp_path, "dvc", "params", "diff", "HEAD~1", "HEAD", "--json", env=env).stdout)
    changed = params["params/experiments.yaml"]
    assert changed["experiments.demo.profiles.smoke.reconstruct.attacks.simudy.tv_weight"] == {"old": None, "new": 0.05}
    metrics = json.loads(run_tool(tmp_path, "dvc", "metrics", "diff", "HEAD~1", "HEAD", "--json", env=env).stdout)
    assert "simudy.ssim" in metrics["results/demo/smoke/metrics.json"]
