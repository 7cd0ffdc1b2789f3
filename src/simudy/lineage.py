"""What each pipeline step depends on besides its input files: the package's source files it
runs and the registry entries it reads. The Snakemake rules take both as inputs and params, and
the generated dvc.yaml (simudy.dvcstages) takes the same lists, so the two tools see the same
changes: editing `simulate.py` touches SimuDy's reconstructions only, editing one method's
settings only that method's jobs.

Source files are found by reading `import` statements (never by importing): a step's files
are its entry modules and everything they import from the package, transitively."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path
from typing import Any

from simudy.config import Registry

PACKAGE = "simudy"
ROOT = Path(__file__).resolve().parent

# Entry modules of each CLI stage that a pipeline rule runs. A reconstruction adds its attack's
# module (simudy.attacks.base.MODULES); the CLI itself only parses arguments and wires modules.
ENTRY = {
    "data_source": ["simudy.data"],
    "fetch_data": ["simudy.data", "simudy.text"],
    "pretrain": ["simudy.train"],
    "finetune_victim": ["simudy.victim"],
    "simulate_and_reconstruct": ["simudy.reconstruct"],
    "pair_by_ssim": ["simudy.pairing", "simudy.text_pairing"],
    "report": ["simudy.report"],
    "sweep_report": ["simudy.sweep"],
    "table": ["simudy.report"],
    "group_table": ["simudy.report"],
    "ablation_run": ["simudy.ablation", "simudy.attacks.simudy"],
    "ablation_table": ["simudy.ablation"],
    "linearity": ["simudy.linearity"],
    "catalogue": ["simudy.catalogue"],
    "benchmark_suite": ["simudy.bench", "simudy.attacks.simudy"],
    "bench_precision": ["simudy.bench", "simudy.attacks.simudy"],
    "bench_projection": ["simudy.bench"],
}


def module_file(module: str) -> Path:
    rel = Path(*module.split(".")[1:])
    package = ROOT / rel / "__init__.py"
    return package if package.exists() else (ROOT / rel).with_suffix(".py")


def _is_module(name: str) -> bool:
    return module_file(name).exists()


@cache
def _imports(module: str) -> frozenset[str]:
    """The package modules `module` imports, including the packages they live in."""
    found = set()
    for node in ast.walk(ast.parse(module_file(module).read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] != PACKAGE:
                continue
            found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1) if _is_module(".".join(parts[:i])))
    return frozenset(found - {module})


def code_files(modules: list[str]) -> list[str]:
    """Source files of `modules` and of every package module they import, transitively, as
    paths relative to the repository (where `src/` is)."""
    seen: set[str] = set()
    todo = list(modules)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(_imports(module))
    repo = ROOT.parent.parent
    return sorted(str(module_file(m).relative_to(repo)) for m in seen)


def step_code(rule: str, attack: str | None = None) -> list[str]:
    """The source files a rule's job runs; `attack` names a reconstruction's attack."""
    from simudy.attacks.base import MODULES

    return code_files(ENTRY[rule] + ([MODULES[attack]] if attack else []))


# -- registry entries ------------------------------------------------------------------------


def _layers(reg: Registry, experiment: str, profile: str, section: str) -> list[str]:
    """Dotted registry keys whose merge gives `section` of an experiment at a profile."""
    if section in ("init", "victim"):
        experiment, profile = reg.victim_owner(experiment, profile)
    return [f"defaults.{section}", f"experiments.{experiment}.{section}",
            f"experiments.{experiment}.profiles.{profile}.{section}"]


_MISSING = object()


def _lookup(raw: dict[str, Any], key: str) -> Any:
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _present(raw: dict[str, Any], keys: list[str]) -> list[str]:
    """The keys that exist in the raw registry (DVC refuses parameters that do not)."""
    return [key for key in keys if _lookup(raw, key) is not _MISSING]


def step_keys(raw: dict[str, Any], reg: Registry, rule: str, wildcards: dict[str, str]) -> list[str]:
    """The registry keys a rule's job reads, for the jobs DVC and Snakemake both track."""
    e, p = wildcards.get("experiment"), wildcards.get("profile")
    if rule in ("data_source", "fetch_data"):
        keys = [f"datasets.{wildcards['dataset']}"]
    elif rule == "pretrain":
        keys = [f"experiments.{e}.dataset", f"datasets.{reg.experiments[e].dataset}", *_layers(reg, e, p, "init")]
    elif rule == "finetune_victim":
        keys = _layers(reg, e, p, "init") + _layers(reg, e, p, "victim")
    elif rule == "simulate_and_reconstruct":
        recon = _layers(reg, e, p, "reconstruct")
        rc = reg.resolve(e, p).reconstruct
        # A run at its own seed does not depend on which other seeds repeat it.
        repeat = ("seeds",) if rc.primary(wildcards["method"]) != wildcards["method"] else ()
        leaves = ("threat", f"attacks.{rc.base_method(wildcards['method'])}", "sweep", *repeat)
        keys = [f"{k}.{leaf}" for k in recon for leaf in leaves]
    elif rule == "pair_by_ssim":
        keys = []
    elif rule == "report":
        keys = [f"experiments.{e}.title", *_layers(reg, e, p, "evaluate"),
                *(f"{k}.methods" for k in _layers(reg, e, p, "reconstruct"))]
    elif rule == "sweep_report":
        keys = [f"experiments.{e}.title", *_layers(reg, e, p, "evaluate"),
                *(f"{k}.{leaf}" for k in _layers(reg, e, p, "reconstruct") for leaf in ("methods", "sweep", "attacks"))]
    elif rule == "group_table":
        keys = [f"groups.{wildcards['group']}.methods"]
    else:
        keys = []
    return _present(raw, keys)


def values(raw: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """The registry's values at `keys`: a Snakemake params value that changes exactly when DVC
    sees one of these parameters change."""
    return {key: _lookup(raw, key) for key in keys}
