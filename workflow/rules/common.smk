import json
import shlex
import sys
from pathlib import Path

import yaml

# The rules run this checkout's package, whichever environment runs Snakemake (or --use-conda's).
SRC = str(Path(workflow.basedir) / "src")
sys.path.insert(0, SRC)

from simudy import data, lineage  # noqa: E402
from simudy.config import load_registry, parse_overrides  # noqa: E402
from simudy.errors import SimudyError  # noqa: E402
from snakemake.exceptions import WorkflowError  # noqa: E402

REGISTRY = config["registry"]
REG = load_registry(REGISTRY)
RAW = yaml.safe_load(open(REGISTRY))
PROFILE = config.get("profile") or REG.active_profile
# `--config 'set=["reconstruct.attacks.simudy.steps=200"]'`: the CLI's --set, for every job that
# reads an experiment's settings; validated here, before any job runs.
SETS = config.get("set") or []
try:
    OVERRIDES = parse_overrides(SETS)
    for _name, _entry in REG.experiments.items() if SETS else []:
        if PROFILE in _entry.profiles:
            REG.resolve(_name, PROFILE, OVERRIDES)
except SimudyError as err:
    raise WorkflowError(f"--config set: {err}") from None
SET_ARGS = "".join(f" --set {shlex.quote(s)}" for s in SETS).replace("{", "{{").replace("}", "}}")
ENV = "../envs/simudy.yaml"
RUN = "results/{experiment}/{profile}"
# Threads of the jobs that train or attack (torch follows OMP_NUM_THREADS, which Snakemake sets
# to a job's threads): fixed, so that a result does not depend on --cores.
HEAVY = 2


def cli(args, outputs="{output:q}"):
    """A rule's shell command: the simudy CLI, everything it prints going to the rule's log.

    Every output is flagged update(): Snakemake keeps it until the job succeeds and restores it
    if the job fails, so a failed job never leaves a missing file under downstream results that
    Snakemake would then report as up to date (snakemake/snakemake#1978). The job first empties
    its outputs: a killed run leaves them empty and marked incomplete, which the next snakemake
    (rerun-incomplete, profiles/default) and the next dvc repro (hash changed) both redo."""
    return f"truncate -s 0 {outputs} && PYTHONPATH={shlex.quote(SRC)} python -m simudy {args} > {{log:q}} 2>&1"


def cfg(w):
    return REG.resolve(w.experiment, w.profile, OVERRIDES)


def tracked(step):
    """Params value: the registry entries that step's jobs read, as DVC tracks them."""
    def value(w):
        keys = lineage.values(RAW, lineage.step_keys(RAW, REG, step, dict(w.items())))
        return json.dumps({**keys, "--set": SETS} if SETS else keys, sort_keys=True)

    return value


def code(step):
    """Input: the package's source files that step's jobs run (a reconstruction: its attack's)."""
    if step == "simulate_and_reconstruct":
        return lambda w: lineage.step_code(step, cfg(w).reconstruct.method(w.method).attack)
    return lineage.step_code(step)


def per_method(pattern):
    """Input function: `pattern` for each of the experiment's runs (its methods; a sweep's points)."""
    return lambda w: [pattern.format(experiment=w.experiment, profile=w.profile, method=m)
                      for m in cfg(w).reconstruct.runs()]


def victim_file(name):
    """Input function: a file of the victim this run attacks (its profile's, or a shared one)."""
    return lambda w: f"results/{cfg(w).victim_experiment}/{cfg(w).victim_profile}/victim/{name}"


def natural_images(w):
    """Input function: the dataset file, for a run that starts from natural images (Fig. 8)."""
    attack = cfg(w).reconstruct.method(w.method)
    return [dataset_file(w)] if getattr(attack, "init_images", "noise") == "natural" else []


def dataset_file(w):
    return f"results/data/{REG.experiments[w.experiment].dataset}.npz"


def report_files(experiment, profile):
    run = RUN.format(experiment=experiment, profile=profile)
    sweep = [f"{run}/report/sweep.csv", f"{run}/sweep.json"] if has_sweep(experiment, profile) else []
    return [f"{run}/report/rows.csv", f"{run}/metrics.json", *sweep]


def has_profile(experiment, profile):
    return profile in REG.experiments[experiment].profiles


def has_sweep(experiment, profile):
    return has_profile(experiment, profile) and REG.resolve(experiment, profile, OVERRIDES).reconstruct.sweep is not None


def paper_value(w):
    """The paper's mean SSIM per method, for the figure captions."""
    paper = cfg(w).evaluate.paper_ssim
    return ", ".join(f"{m} {paper[m]:.4f}" for m in cfg(w).reconstruct.runs() if m in paper) or "not reported"


def bench_victims(w):
    """The victims a benchmark suite's quality cases run on."""
    cases = yaml.safe_load(open(f"bench/{w.suite}.yaml"))["cases"].values()
    runs = {(c["experiment"], c["profile"]) for c in cases if c["kind"] == "quality"}
    return [f"results/{e}/{p}/victim/thetaf.safetensors" for e, p in sorted(runs)]


def catalogue_metrics(catalogue):
    """Input function: the metrics files the catalogue reads that exist now, flagged
    before_update: a changed one reruns the table, but no experiment runs to make one."""
    from simudy.catalogue import input_files

    return lambda w: [before_update(f) for f in input_files(catalogue, REG, "results")]


def linearity_settings(w):
    """Params value: a linearity table's settings at the profile, and the θ0 recipe of its
    pre-trained networks (a change to either reruns the job)."""
    _, lin = REG.linearity_table(w.linearity, w.profile)
    theta0 = {n: REG.linearity_theta0(lin, n).model_dump() for n in lin.measured() if lin.network_init(n) == "pretrained"}
    return json.dumps({"table": lin.model_dump(), "theta0": theta0}, sort_keys=True)


def ablation_victim(w):
    """The victim an ablation attacks."""
    ab = REG.ablation(w.ablation)
    return f"results/{ab.experiment}/{ab.profile}/victim/victim.json"
