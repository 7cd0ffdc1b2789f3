import json

import yaml

from simudy.config import load_registry

REGISTRY = config["registry"]
REG = load_registry(REGISTRY)
PROFILE = config.get("profile") or REG.active_profile
# Rules run `simudy` from the active environment; with --use-conda, from this one.
ENV = "../../environment.yml"
RUN = "results/{experiment}/{profile}"



def cfg(w):
    return REG.resolve(w.experiment, w.profile)


def section(name):
    """One resolved config section as a params value, so that editing it reruns the job."""
    return lambda w: json.dumps(cfg(w).section(name), sort_keys=True)


def method_section(w):
    """One method's attack settings and the threat model: editing another method's settings
    does not rerun this one."""
    r = cfg(w).reconstruct
    return json.dumps({"threat": r.threat.model_dump(), "attack": r.method(w.method).model_dump()}, sort_keys=True)


def per_method(pattern):
    """Input function: `pattern` for each of the experiment's methods."""
    return lambda w: [pattern.format(experiment=w.experiment, profile=w.profile, method=m)
                      for m in cfg(w).reconstruct.methods]


def victim_file(name):
    """Input function: a file of the victim this run attacks (its profile's, or a shared one)."""
    return lambda w: f"results/{w.experiment}/{cfg(w).victim_profile}/victim/{name}"


def dataset_file(w):
    return f"results/data/{REG.experiments[w.experiment].dataset}.npz"


def report_files(experiment, profile):
    run = RUN.format(experiment=experiment, profile=profile)
    return [f"{run}/report/figure.png", f"{run}/report/loss.png", f"{run}/report/rows.csv", f"{run}/metrics.json"]


def bench_victims(w):
    """The victims a benchmark suite's quality cases run on."""
    cases = yaml.safe_load(open(f"bench/{w.suite}.yaml"))["cases"].values()
    runs = {(c["experiment"], c["profile"]) for c in cases if c["kind"] == "quality"}
    return [f"results/{e}/{p}/victim/thetaf.safetensors" for e, p in sorted(runs)]


def ablation_victim(w):
    """The victim an ablation attacks."""
    ab = REG.ablation(w.ablation)
    return f"results/{ab.experiment}/{ab.profile}/victim/victim.json"
