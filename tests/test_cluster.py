"""The SLURM cluster profile (profiles/slurm, snakemake-executor-plugin-slurm): it caps no
resource, and on a dry run of the pipeline the plugin would submit the GPU rules' jobs with
`--gpus=1` and every other job without a GPU. No cluster is needed: a dry run never calls
sbatch, sinfo or squeue (without sinfo on PATH the plugin picks no status command), so no
fake SLURM binaries are put on PATH."""

import json
import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT, tool

# As documented in profiles/slurm/config.yaml: `--workflow-profile none` keeps profiles/default
# (the local runs' `resources: gpu=1` cap) out of a cluster run.
SLURM = ["--profile", "profiles/slurm", "--workflow-profile", "none"]


def gpu_rules() -> set[str]:
    """The rules whose `resources:` declare gpu=1, read from workflow/rules/*.smk."""
    rules = set()
    for path in sorted((ROOT / "workflow/rules").glob("*.smk")):
        for name, body in re.findall(r"^rule (\w+):\n(.*?)(?=^\S|\Z)", path.read_text(), re.M | re.S):
            if re.search(r"^\s+resources:\n(?:\s+\w+=.*\n)*?\s+gpu=1,", body, re.M):
                rules.add(name)
    return rules


GPU_RULES = {"pretrain", "finetune_victim", "simulate_and_reconstruct", "ablation_run", "benchmark_suite", "linearity"}


def test_gpu_rules_are_the_ones_the_profile_sizes():
    assert gpu_rules() == GPU_RULES


def test_profile_asks_slurm_and_caps_no_resource(monkeypatch):
    from snakemake.cli import parse_args

    monkeypatch.chdir(ROOT)
    _, args = parse_args(["-n", *SLURM, "demo"])
    assert args.executor == "slurm"
    assert args.jobs >= 1 and args.latency_wait >= 30
    assert args.rerun_incomplete and args.keep_incomplete and args.printshellcmds
    assert not args.resources, f"a cluster profile must not cap resources: {args.resources}"
    assert "gpu" not in args.default_resources, "default gpu would put every CPU job on a GPU"
    assert set(args.set_resources) == GPU_RULES
    assert all("gpu" not in res for res in args.set_resources.values())


def _pipeline(tmp_path):
    """A copy of the pipeline definition to dry-run in (fresh results/, so every job is planned),
    running this checkout's src/."""
    for name in ["Snakefile", "workflow", "params", "profiles", "bench"]:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    (tmp_path / "src").symlink_to(ROOT / "src")
    return tmp_path


def _run(cwd, *cmd):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_slurm_dry_run_plans_the_gpu_jobs(tmp_path):
    out = _run(_pipeline(tmp_path), tool("snakemake"), "-n", *SLURM, "demo")
    assert "Using profile profiles/slurm for setting" in out
    assert "workflow specific profile" not in out
    jobs = dict(re.findall(r"^rule (\w+):\n(.*?)(?=^\S|\Z)", out, re.M | re.S))
    assert {"pretrain", "finetune_victim", "simulate_and_reconstruct", "fetch_data", "report"} <= set(jobs)
    for rule, block in jobs.items():
        resources = re.search(r"resources: (.*)", block).group(1)
        assert ("gpu=1" in resources.split(", ")) == (rule in GPU_RULES), (rule, resources)


# Runs Snakemake's own CLI (parse_args + args_to_api, as `snakemake` does) and keeps the DAG's jobs,
# then builds each job's sbatch call with the plugin's functions, as Executor.run_job does (its
# account, partition, log and workdir arguments are left empty here): pinned plugin 2.8.0's
# submit_string.get_submit_command and utils.set_gres_string.
SBATCH_PROBE = """
import json, sys
import snakemake.api  # imports snakemake.workflow without an import cycle
import snakemake.workflow
from snakemake.cli import args_to_api, parse_args
from snakemake_executor_plugin_slurm import ExecutorSettings
from snakemake_executor_plugin_slurm.submit_string import get_submit_command
from snakemake_executor_plugin_slurm.utils import set_gres_string

jobs = []
execute = snakemake.workflow.Workflow.execute

def keep_jobs(self, *args, **kwargs):
    result = execute(self, *args, **kwargs)
    jobs.extend(job for job in self.dag.jobs if not (job.rule.norun or job.rule.name in self._localrules))
    return result

snakemake.workflow.Workflow.execute = keep_jobs
parser, args = parse_args(sys.argv[1:])
assert args_to_api(args, parser)
params = {"run_uuid": "RUN", "slurm_logfile": "LOG", "account": "", "partition": "", "workdir": ""}
calls = {job.rule.name: get_submit_command(job, {**params, "comment_str": job.rule.name}, settings=ExecutorSettings())
         + set_gres_string(job) for job in jobs}
print("SBATCH=" + json.dumps(calls))
"""


@pytest.mark.slow
def test_slurm_submits_gpu_jobs_with_a_gpu_and_cpu_jobs_without(tmp_path):
    # Targets that reach all six GPU rules; --cores 8 because a dry run caps threads at --cores
    # (1 unless given) while a cluster run does not.
    out = _run(_pipeline(tmp_path), sys.executable, "-c", SBATCH_PROBE, "-n", "--cores", "8", *SLURM,
               "demo", "bench", "fig1_speed", "tab1")
    calls = json.loads(re.search(r"^SBATCH=(.*)$", out, re.M).group(1))
    assert GPU_RULES <= set(calls) and {"fetch_data", "pair_by_ssim", "report"} <= set(calls)
    for rule, call in calls.items():
        args = call.split()
        if rule in GPU_RULES:
            assert "--gpus=1" in args and "--cpus-per-task=2" in args, call
            assert ["-t", "1440"] == args[args.index("-t"):args.index("-t") + 2], call
        else:
            assert not [a for a in args if a.startswith(("--gpus", "--gres"))], call
            assert ["-t", "60"] == args[args.index("-t"):args.index("-t") + 2], call
