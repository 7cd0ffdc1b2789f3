"""The environments the project ships agree with pyproject.toml: the conda environments
(environment.yml for people, workflow/envs/simudy.yaml for `snakemake --use-conda`), the
hash-pinned requirements.lock, and (slow) that pip resolves the rules' pins without CUDA."""

import json
import re
import subprocess
import sys
import tomllib

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DEPENDENCIES = PYPROJECT["project"]["dependencies"]
TEST_EXTRA = PYPROJECT["project"]["optional-dependencies"]["test"]
# What torch from PyPI brings on Linux when it is the CUDA build; none of it may be resolved.
CUDA_PREFIXES = ("nvidia-", "cuda-", "triton")


def conda_env(path):
    """(conda dependencies, pip list) of a conda environment file."""
    env = yaml.safe_load((ROOT / path).read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pips = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pips) == 1, f"{path}: one `pip:` list expected"
    assert env["channels"] == ["conda-forge"], path
    assert "python=3.11" in conda and "pip" in conda, path
    return conda, pips[0]


def pins(reqs):
    """{canonical name: version} of exact pins; anything else is an error."""
    out = {}
    for line in reqs:
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==" and not req.marker and not req.extras, f"not an exact pin: {line}"
        out[canonicalize_name(req.name)] = spec.version
    assert len(out) == len(reqs), f"a package is pinned twice: {reqs}"
    return out


def test_pyproject_pins_everything_exactly():
    assert pins(DEPENDENCIES) and pins(TEST_EXTRA)


def test_rules_env_has_pyproject_runtime_pins():
    _, pip = conda_env("workflow/envs/simudy.yaml")
    assert not [p for p in pip if p.startswith("-")], "no `-e .` or pip options: the rules use src/ on PYTHONPATH"
    assert pins(pip) == pins(DEPENDENCIES)


def test_environment_yml_has_pyproject_pins_pytest_and_the_package():
    _, pip = conda_env("environment.yml")
    assert "-e ." in pip
    assert pins([p for p in pip if p != "-e ."]) == pins(DEPENDENCIES + TEST_EXTRA)


def test_lock_pins_every_package_with_hashes_and_no_cuda():
    text = (ROOT / "requirements.lock").read_text()
    entries = re.findall(r"^([A-Za-z0-9][\w.-]*)==(\S+)((?:[ \t]*\\\n[ \t]+--hash=sha256:[0-9a-f]{64})*)", text, re.M)
    requirement_lines = re.findall(r"^[A-Za-z0-9]", text, re.M)
    assert len(entries) == len(requirement_lines) > 100
    lock = {canonicalize_name(name): version for name, version, _ in entries}
    assert [name for name, _, hashes in entries if "--hash=sha256:" not in hashes] == []
    assert [name for name in lock if name.startswith(CUDA_PREFIXES)] == []
    for line in DEPENDENCIES + TEST_EXTRA:  # torch==2.13.0 is locked as its CPU build 2.13.0+cpu
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name in lock and req.specifier.contains(Version(lock[name])), (line, lock.get(name))


def _index_unreachable(output: str) -> bool:
    markers = ("NewConnectionError", "ConnectTimeout", "ReadTimeout", "Temporary failure in name resolution",
               "Network is unreachable", "Failed to establish a new connection", "ProxyError")
    return any(m in output for m in markers)


@pytest.mark.slow
def test_pip_resolves_the_rules_env_at_its_pins_without_cuda(tmp_path):
    """What `--use-conda` would have pip install, resolved (not installed) in a bare venv. Conda is
    not on the test machines, so this pip resolution stands in for creating the environment."""
    _, pip = conda_env("workflow/envs/simudy.yaml")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    report = tmp_path / "r.json"
    # Short timeout and one retry: an unreachable index skips in seconds instead of hanging.
    cmd = [venv / "bin/pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--disable-pip-version-check",
           "--timeout", "30", "--retries", "1", "--report", report, *pip]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 and _index_unreachable(proc.stdout + proc.stderr):
        pytest.skip(f"pip cannot reach a package index: {proc.stderr.strip()[-300:]}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    resolved = {canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"]
                for item in json.loads(report.read_text())["install"]}
    for name, version in pins(pip).items():
        assert name in resolved, f"{name} not resolved"
        # == semantics: torch==2.13.0 is met by the CPU build 2.13.0+cpu where pip is offered it.
        assert Requirement(f"{name}=={version}").specifier.contains(Version(resolved[name])), (name, resolved[name])
    cuda = sorted(name for name in resolved if name.startswith(CUDA_PREFIXES))
    assert cuda == [], (f"torch resolved to a CUDA build ({resolved.get('torch')}): offer pip the CPU wheel "
                        f"(find-links, or --extra-index-url https://download.pytorch.org/whl/cpu); got {cuda}")
