"""The DVC layer and the committed state: dvc.yaml is what the Snakemake DAG says, the lock,
metrics and tables agree with it, and in a throwaway copy of the repository (the demo at the
smoke profile) only touched work reruns, through either tool."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from simudy import dvcstages, lineage, schema
from simudy.config import load_registry, read_yaml

REPO = Path(__file__).resolve().parent.parent
REGISTRY = "params/experiments.yaml"


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_dvc_yaml_is_generated_from_the_snakemake_dag():
    assert (REPO / "dvc.yaml").read_text() == dvcstages.render(REPO), "stale dvc.yaml: run `simudy dvc-yaml`"


def test_registry_schema_is_current_and_accepts_the_registry():
    import jsonschema

    committed = yaml.safe_load((REPO / "params/experiments.schema.json").read_text())
    assert committed == schema.registry_schema(), "stale schema: run `simudy schema`"
    jsonschema.validate(read_yaml(REPO / REGISTRY), committed)


def test_code_dependencies_follow_the_imports():
    simudy = lineage.step_code("simulate_and_reconstruct", "simudy")
    baselines = [lineage.step_code("simulate_and_reconstruct", a) for a in ("loo", "kkt", "weighted_ce", "gradinv")]
    victim = lineage.step_code("finetune_victim")
    assert "src/simudy/simulate.py" in simudy
    assert all("src/simudy/simulate.py" not in files for files in [*baselines, victim])
    assert "src/simudy/attacks/loo.py" not in simudy
    assert "src/simudy/pairing.py" in lineage.step_code("pair_by_ssim")
    assert all("src/simudy/pairing.py" not in files for files in [simudy, *baselines, victim])
    assert "src/simudy/config.py" in simudy and "src/simudy/data.py" in victim


def _uncached(stage: dict) -> set[str]:
    """A stage's outputs that go to git (`cache: false`) rather than to DVC's cache."""
    entries = [e for field in ("outs", "metrics", "plots") for e in stage.get(field, [])]
    return {path for e in entries if isinstance(e, dict) for path, opts in e.items() if opts.get("cache") is False}


def test_committed_lock_metrics_and_table_agree():
    """Every stage in dvc.lock is a stage of dvc.yaml with the same command, and the outputs
    committed to git (metrics, loss curves, tables) are the ones the lock records. Stages not
    run yet are simply absent from the lock (`dvc status` lists them)."""
    stages = read_yaml(REPO / "dvc.yaml")["stages"]
    locked = read_yaml(REPO / "dvc.lock")["stages"]
    assert set(locked) <= set(stages), f"stages locked but no longer defined: {sorted(set(locked) - set(stages))}"
    for_git = sorted(set().union(*(_uncached(stage) for stage in stages.values())))
    ignored = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=REPO, input="\n".join(for_git),
                             capture_output=True, text=True).stdout.split()
    assert not ignored, f"outputs dvc.yaml leaves to git but .gitignore hides: {ignored}"
    tracked = set(subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split())
    for name, spec in locked.items():
        assert spec["cmd"] == stages[name]["cmd"], name
        in_git = _uncached(stages[name])
        for out in spec.get("outs", []):
            if out["path"] in in_git:
                path = REPO / out["path"]
                assert out["path"] in tracked, f"{out['path']} ({name}) is locked but not committed"
                assert _md5(path) == out["md5"], f"{out['path']} is not what {name} produced"
    reg = load_registry(REPO / REGISTRY)
    if f"table-{reg.active_profile}" not in locked:
        return
    lines = [line for line in (REPO / f"results/table_{reg.active_profile}.md").read_text().splitlines()
             if line.startswith("|")]
    header, *body = ([cell.strip() for cell in line.strip("|").split("|")] for line in lines[:1] + lines[2:])
    rows = {(row[header.index("experiment")], row[header.index("method")]) for row in body}
    expected = {(e, m) for e in reg.experiments for m in reg.resolve(e, reg.active_profile).reconstruct.primary_runs()}
    assert rows == expected


# -- a throwaway copy: the demo at the smoke profile ---------------------------------------------


def _run(cmd: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(cwd / "src"),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    out = subprocess.run(cmd, shell=True, cwd=cwd, env=env, capture_output=True, text=True)
    if check and out.returncode:
        raise AssertionError(f"{cmd} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


@pytest.fixture(scope="module")
def demo_repo(tmp_path_factory) -> Path:
    """A git + DVC copy of the checkout whose registry holds only `demo`, at the smoke profile,
    built once with `dvc repro`."""
    root = tmp_path_factory.mktemp("repo")
    files = subprocess.run("git ls-files -co --exclude-standard", shell=True, cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    for rel in files:
        if not rel.startswith("results/") and (REPO / rel).is_file():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, root / rel)
    raw = read_yaml(REPO / REGISTRY)
    raw.update(active_profile="smoke", experiments={"demo": raw["experiments"]["demo"]}, groups={}, ablations={},
               linearity={}, datasets={"digits": raw["datasets"]["digits"]})
    (root / REGISTRY).write_text(yaml.safe_dump(raw, sort_keys=False))
    # Here the smoke profile stands in for a real one: version its committed outputs too.
    ignore = root / ".gitignore"
    ignore.write_text(ignore.read_text().replace("/results/*/smoke/**", ""))
    _run("python -m simudy dvc-yaml && git init -q && git add -A && git -c user.email=t@t -c user.name=t "
         "commit -qm init && dvc repro -q", root)
    _run("git add -A && git -c user.email=t@t -c user.name=t commit -qm run", root)
    return root


def _changed_stages(root: Path) -> set[str]:
    """The stages `dvc status` reports, less the data_source ones: DVC runs those every time (they
    look at the data outside the repository) and reruns fetch_data only when their record changed."""
    status = yaml.safe_load(_run("dvc status --json", root).stdout) or {}
    return {name for name, why in status.items() if why != ["always changed"]}


def _ran(out: str) -> set[str]:
    """The stages a `dvc repro` ran, less the data_source ones (see _changed_stages)."""
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    return {name for name in ran if not name.startswith("data_source-")}


def _planned_jobs(root: Path) -> set[str]:
    """The rules of the jobs that `snakemake -n tables` would run (its "Job stats" block)."""
    lines = _run("snakemake -n tables", root).stdout.splitlines()
    if "Job stats:" not in lines:
        return set()
    stats = lines[lines.index("Job stats:") + 3:]
    return {line.split()[0] for line in stats[:next(i for i, x in enumerate(stats) if x.startswith("total"))]}


def _set_steps(root: Path, steps: int) -> None:
    raw = yaml.safe_load((root / REGISTRY).read_text())
    raw["experiments"]["demo"]["profiles"]["smoke"]["reconstruct"]["attacks"]["simudy"]["steps"] = steps
    (root / REGISTRY).write_text(yaml.safe_dump(raw, sort_keys=False))


def _restore(root: Path) -> None:
    """Undo a test's edits and bring both tools back in step by recomputing what they touched
    (a `dvc checkout` would restore older files than Snakemake's records)."""
    _run("git checkout -q -- src params .dvc && dvc repro -q", root)


@pytest.mark.slow
def test_fresh_repo_is_clean_and_reruns_nothing(demo_repo):
    assert _changed_stages(demo_repo) == set()
    assert "didn't change" in _run("dvc repro", demo_repo).stdout
    assert _planned_jobs(demo_repo) == set()


@pytest.mark.slow
def test_edits_mark_only_the_touched_work(demo_repo):
    recon = {"simulate_and_reconstruct-demo-smoke-simudy"}
    try:
        _set_steps(demo_repo, 21)
        assert _changed_stages(demo_repo) == recon
        assert _planned_jobs(demo_repo) == {"simulate_and_reconstruct", "pair_by_ssim", "report", "table", "tables"}
        _restore(demo_repo)
        with open(demo_repo / "src/simudy/pairing.py", "a") as fh:
            fh.write("\n# touched\n")
        assert _changed_stages(demo_repo) == {"pair_by_ssim-demo-smoke-simudy", "report-demo-smoke", "table-smoke"}
        _restore(demo_repo)
        with open(demo_repo / "src/simudy/simulate.py", "a") as fh:
            fh.write("\n# touched\n")
        assert _changed_stages(demo_repo) == recon
        ran = _ran(_run("dvc repro", demo_repo).stdout)
        assert ran <= recon | {"pair_by_ssim-demo-smoke-simudy", "report-demo-smoke", "table-smoke"}
        assert not any(s.startswith(("pretrain", "finetune_victim", "fetch_data")) for s in ran)
    finally:
        _restore(demo_repo)


RECON = "simulate_and_reconstruct-demo-smoke-simudy"


def _start_forced_reconstruction(root: Path) -> subprocess.Popen:
    """The reconstruction's DVC stage command, started in its own process group; returns once
    the attack runs."""
    cmd = yaml.safe_load((root / "dvc.yaml").read_text())["stages"][RECON]["cmd"]
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.Popen(cmd, shell=True, cwd=root, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not _attack_pids(root):
        time.sleep(0.02)
    assert _attack_pids(root), "the reconstruction never started"
    return proc


def _attack_pids(root: Path) -> list[int]:
    out = subprocess.run(["pgrep", "-f", "python -m simudy reconstruct"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split() if Path(f"/proc/{p}/cwd").resolve() == root.resolve()]


@pytest.mark.slow
def test_killed_reconstruction_is_redone_by_both_tools(demo_repo):
    """Kill Snakemake and its job mid-run (Ctrl-C twice, a lost machine): both tools redo it."""
    proc = _start_forced_reconstruction(demo_repo)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        assert "simulate_and_reconstruct" in _planned_jobs(demo_repo)
        assert RECON in _changed_stages(demo_repo)
        _run("dvc repro", demo_repo)
        assert _changed_stages(demo_repo) == set() and _planned_jobs(demo_repo) == set()
    finally:
        _restore(demo_repo)


@pytest.mark.slow
def test_failed_reconstruction_restores_the_previous_result(demo_repo):
    """A job that fails (here: its attack is killed) gives back the previous outputs, so no
    report is left standing on a missing reconstruction, and both tools agree nothing changed."""
    out = demo_repo / "results/demo/smoke/reconstruct/simudy/reconstruction.safetensors"
    before = _md5(out)
    proc = _start_forced_reconstruction(demo_repo)
    for pid in _attack_pids(demo_repo):
        os.kill(pid, signal.SIGKILL)
    assert proc.wait(timeout=60) != 0
    assert _md5(out) == before
    assert _changed_stages(demo_repo) == set() and _planned_jobs(demo_repo) == set()


@pytest.mark.slow
def test_push_clone_pull_is_clean(demo_repo, tmp_path):
    remote = tmp_path / "remote"
    _run(f"git add -A && git -c user.email=t@t -c user.name=t commit -qm rerun --allow-empty && "
         f"dvc remote add -d local {remote} && dvc push -q", demo_repo)
    clone = tmp_path / "clone"
    _run(f"git clone -q {demo_repo} {clone}", tmp_path)
    _run(f"dvc remote add -d local {remote} && dvc pull -q", clone)
    assert _changed_stages(clone) == set()
    assert _ran(_run("dvc repro", clone).stdout) == set()


@pytest.mark.slow
def test_experiment_run_then_params_metrics_and_plots_diff(demo_repo):
    key = "experiments.demo.profiles.smoke.reconstruct.attacks.simudy.steps"
    try:
        _run(f"dvc exp run -q -n steps21 -S '{REGISTRY}:{key}=21'", demo_repo)
        shown = yaml.safe_load(_run("dvc exp show --json", demo_repo).stdout)
        runs = [e["revs"][0] for rev in shown for e in (rev.get("experiments") or [])]
        data = next(r["data"] for r in runs if r["name"] == "steps21")
        params = data["params"][REGISTRY]["data"]
        assert params["experiments"]["demo"]["profiles"]["smoke"]["reconstruct"]["attacks"]["simudy"]["steps"] == 21
        assert "simudy" in data["metrics"]["results/demo/smoke/metrics.json"]["data"]
        params = yaml.safe_load(_run("dvc params diff HEAD --json", demo_repo).stdout)[REGISTRY]
        assert (params[key]["old"], params[key]["new"]) == (20, 21)
        metrics = yaml.safe_load(_run("dvc metrics diff HEAD --json", demo_repo).stdout)
        assert "simudy.ssim" in metrics["results/demo/smoke/metrics.json"]
        plots = yaml.safe_load(_run("dvc plots diff HEAD --json", demo_repo).stdout)["data"]
        assert set(plots["results/demo/smoke/reconstruct/simudy/loss.csv"][0]["revisions"]) == {"HEAD", "workspace"}
    finally:
        _restore(demo_repo)
