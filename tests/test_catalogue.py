"""The catalogue of the paper's experiments (simudy.catalogue): built from the metrics files alone,
statuses, the real catalogue's 22 rows, and clear errors for a bad catalogue file."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from simudy import catalogue
from simudy.config import load_registry
from simudy.errors import SimudyError
from tests.conftest import run_cli

REPO = Path(__file__).resolve().parent.parent
REGISTRY = REPO / "params/experiments.yaml"
CATALOGUE = REPO / "params/catalogue.yaml"
# The paper's experiments, in the order of its catalogue (shared/docs/experiments.md).
PAPER_IDS = ["fig1", "fig2", "fig3", "fig4", "fig5", "fig6", "fig7", "fig8", "fig9", "fig10", "tab1", "figB",
             "fig12", "fig13", "fig14", "tv", "buzaglo", "binary", "vit", "nlp", "sizes", "tab3"]


@pytest.fixture(scope="module")
def reg():
    return load_registry(REGISTRY)


def _catalogue(path: Path, rows: dict) -> Path:
    path.write_text(yaml.safe_dump({"tolerance": 0.03, "profiles": ["cpu", "paper"], "paper_profile": "paper",
                                    "rows": rows}, sort_keys=False))
    return path


def _metrics(results: Path, experiment: str, profile: str, values: dict, name: str = "metrics.json") -> Path:
    path = results / experiment / profile / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(values))
    return path


def _row(sources=(), **extra) -> dict:
    return {"paper_ref": "Fig. X", "measure": "SSIM", **extra, "sources": list(sources)}


def _statuses(reg, cat_path: Path, results: Path) -> dict[str, str]:
    rows, _ = catalogue.build(catalogue.load_catalogue(cat_path), reg, results, cat_path)
    return {r.id: r.status for r in rows}


def test_table_is_regenerated_from_the_metrics_files(tmp_path):
    cat = _catalogue(tmp_path / "catalogue.yaml",
                     {"fig4": _row([{"experiments": ["fig4"], "methods": ["simudy", "loo_authors"]}])})
    results, out = tmp_path / "results", tmp_path / "out"
    metrics = _metrics(results, "fig4", "cpu", {"simudy": {"ssim": 0.5}, "loo_authors": {"ssim": 0.01}})
    args = ["catalogue", "--registry", REGISTRY, "--catalogue", cat, "--results", results, "--out-dir", out]
    assert run_cli(*args) == 0
    md = (out / "catalogue.md").read_text()
    assert "| simudy 0.3374 · loo_authors 0.1384 | simudy 0.500 · loo_authors 0.010 | — |" in md
    assert "cpu uncommitted" in md  # not in a git repository
    metrics.write_text(json.dumps({"simudy": {"ssim": 0.625}, "loo_authors": {"ssim": 0.01}}))
    assert run_cli(*args) == 0
    assert "simudy 0.625 · loo_authors 0.010" in (out / "catalogue.md").read_text()
    csv = (out / "catalogue.csv").read_text().splitlines()
    assert any(line.startswith("fig4,") and ",simudy,simudy.ssim,cpu,0.625," in line for line in csv)


def test_statuses(reg, tmp_path):
    cat = _catalogue(tmp_path / "catalogue.yaml", {
        "close": _row([{"experiments": ["fig4"], "methods": ["simudy"]}]),
        "far": _row([{"experiments": ["fig5"], "methods": ["simudy"], "plumbing_profiles": ["cpu"]}]),
        "loose": _row([{"experiments": ["fig5"], "methods": ["simudy"]}], tolerance=0.2),
        "plumbing": _row([{"experiments": ["fig1"], "methods": ["simudy"], "plumbing_profiles": ["cpu"]}]),
        "scaled": _row([{"experiments": ["binary"], "methods": ["haim"]}]),
        "not_run": _row([{"experiments": ["gradinv"], "methods": ["gradinv"]}]),
        "no_target": _row(paper={"simudy": 0.2}),
        "unknown_target": _row([{"experiments": ["fig99"], "methods": ["simudy"]}]),
        "by_eye": _row([{"experiments": ["binary"], "methods": ["simudy"]}]),
    })
    results = tmp_path / "results"
    _metrics(results, "fig4", "cpu", {"simudy": {"ssim": 0.8}})
    _metrics(results, "fig4", "paper", {"simudy": {"ssim": 0.32}})  # paper 0.3374
    _metrics(results, "fig5", "cpu", {"simudy": {"ssim": 0.01}})
    _metrics(results, "fig5", "paper", {"simudy": {"ssim": 0.05}})  # paper 0.1982
    _metrics(results, "fig1", "cpu", {"simudy": {"ssim": 0.04}})
    _metrics(results, "binary", "cpu", {"haim": {"ssim": 0.3}, "simudy": {"ssim": 0.07}})
    _metrics(results, "binary", "paper", {"haim": {"ssim": 0.3}, "simudy": {"ssim": 0.07}})
    assert _statuses(reg, cat, results) == {
        "close": "scaled (cpu) · reproduced (paper)",
        "far": "plumbing (cpu) · differs (paper: 0 of 1 within tolerance)",
        "loose": "scaled (cpu) · reproduced (paper)",
        "plumbing": "plumbing (cpu)",
        "scaled": "scaled (cpu) · run, compare by eye (paper)",
        "not_run": "built, not run",
        "no_target": "not built",
        "unknown_target": "not built",
        "by_eye": "scaled (cpu) · run, compare by eye (paper)",
    }


def test_variants_groups_and_sweep_keys(reg, tmp_path):
    cat = _catalogue(tmp_path / "catalogue.yaml", {
        "fig9": _row([{"experiments": ["fig9"], "file": "sweep.json", "plumbing_profiles": ["cpu"],
                       "keys": {"final_loss": "points.simudy_dummies0p5.final_loss"}},
                      {"name": "MLP variant (fig9_mlp)", "experiments": ["fig9_mlp"], "file": "sweep.json",
                       "keys": {"final_loss": "points.simudy_dummies0p5.final_loss"}}]),
        "sizes": _row([{"group": "sizes", "plumbing_profiles": ["cpu"]}]),
    })
    results = tmp_path / "results"
    _metrics(results, "fig9_mlp", "cpu", {"points": {"simudy_dummies0p5": {"final_loss": 0.06}}}, "sweep.json")
    for n, ssim in (("60", 0.01), ("120", 0.03)):
        _metrics(results, f"sizes{n}", "cpu", {m: {"ssim": ssim} for m in ("simudy", "loo_authors", "buzaglo_authors")})
    rows, records = catalogue.build(catalogue.load_catalogue(cat), reg, results, cat)
    fig9, sizes = rows
    assert fig9.paper == "final_loss 0.2"  # the registry's paper_values, once for both sources
    assert fig9.ours["cpu"] == f"{catalogue.NONE}<br>MLP variant (fig9_mlp): final_loss 0.060"
    assert fig9.status == "built, not run<br>MLP variant (fig9_mlp): scaled (cpu)"
    assert sizes.ours["cpu"].startswith("simudy 0.010–0.030 · loo_authors 0.010–0.030")
    assert sizes.ours["cpu"].endswith("(2 of 6 run)")
    assert sizes.paper.startswith("simudy 0.0948–0.2165 · ")
    assert sum(r["id"] == "sizes" and r["profile"] == "cpu" and r["value"] != "" for r in records) == 6


def test_several_seeds_show_mean_and_sd(reg, tmp_path):
    cat = _catalogue(tmp_path / "catalogue.yaml",
                     {"fig4": _row([{"experiments": ["fig4"], "methods": ["simudy", "loo_authors"]}])})
    results = tmp_path / "results"
    # loo_authors as the report writes a repeated run: seed 0's own value beside the seeds'
    repeated = {"ssim": 0.1, "seeds": {"0": {"ssim": 0.1}, "1": {"ssim": 0.2}}}
    _metrics(results, "fig4", "paper", {"simudy": {"ssim": [0.30, 0.36]}, "loo_authors": repeated})
    rows, records = catalogue.build(catalogue.load_catalogue(cat), reg, results, cat)
    assert rows[0].ours["paper"] == "simudy 0.330 ± 0.042 (2 seeds) · loo_authors 0.150 ± 0.071 (2 seeds)"
    assert rows[0].status == "reproduced (paper)"  # the means: 0.33 against 0.3374, 0.15 against 0.1384
    assert {r["n_seeds"] for r in records if r["profile"] == "paper"} == {"2"}


def test_commit_of_a_metrics_file(tmp_path):
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    metrics = _metrics(tmp_path, "fig4", "cpu", {"simudy": {"ssim": 0.5}})
    assert catalogue.Commits()(metrics) == "uncommitted"
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "metrics"], check=True)
    head = subprocess.run([*git, "log", "-1", "--format=%h"], check=True, capture_output=True, text=True).stdout
    assert catalogue.Commits()(metrics) == head.strip()
    metrics.write_text("{}")
    assert catalogue.Commits()(metrics) == "uncommitted"


def test_the_catalogue_lists_the_papers_22_experiments_in_order():
    assert list(catalogue.load_catalogue(CATALOGUE).rows) == PAPER_IDS


def test_the_repository_catalogue_builds_from_the_committed_results(reg, tmp_path):
    rows = catalogue.write_catalogue(reg, CATALOGUE, REPO / "results", tmp_path)
    assert [r.id for r in rows] == PAPER_IDS
    by_id = {r.id: r for r in rows}
    assert by_id["fig4"].status.startswith("scaled (cpu)")
    assert by_id["fig1"].status.startswith("plumbing (cpu)")
    assert "MLP variant (fig2_mlp): scaled (cpu)" in by_id["fig2"].status
    assert re.match(r"cpu ([0-9a-f]{7,}|uncommitted)(<br>|$)", by_id["fig4"].commit)
    md = (tmp_path / "catalogue.md").read_text().splitlines()
    assert [line.split(" | ")[0] for line in md if line.startswith("| ") and not line.startswith("| id ")] \
        == [f"| {i}" for i in PAPER_IDS]
    assert (tmp_path / "catalogue.csv").read_text().startswith("id,paper_ref,measure,")


def test_input_files_are_the_existing_metrics_files_it_reads(reg, tmp_path):
    cat = _catalogue(tmp_path / "catalogue.yaml", {
        "fig4": _row([{"experiments": ["fig4"], "methods": ["simudy"]}]),
        "fig5": _row([{"experiments": ["fig5"], "methods": ["simudy"]}]),
        "later": _row([{"experiments": ["fig99"], "methods": ["simudy"]}]),
    })
    results = tmp_path / "results"
    wanted = _metrics(results, "fig4", "cpu", {"simudy": {"ssim": 0.5}})
    _metrics(results, "fig4", "smoke", {"simudy": {"ssim": 0.5}})  # not a catalogue profile
    _metrics(results, "fig99", "cpu", {"simudy": {"ssim": 0.5}})  # not in the registry
    assert catalogue.input_files(cat, reg, results) == [str(wanted)]


FIG4 = {"experiments": ["fig4"], "methods": ["simudy"]}


@pytest.mark.parametrize("rows, key", [
    ({"fig4": _row([{**FIG4, "methods": "simudy"}])}, "rows.fig4.sources.0.methods"),
    ({"fig4": {**_row([FIG4]), "colour": "red"}}, "rows.fig4.colour"),
    ({"fig4": _row([{**FIG4, "group": "sizes"}])}, "rows.fig4.sources.0"),
    ({"fig4": _row([{**FIG4, "file": "../secret.json"}])}, "rows.fig4.sources.0.file"),
    ({"fig4": _row([{**FIG4, "plumbing_profiles": ["gpu"]}])}, "rows.fig4.sources.0.plumbing_profiles"),
    ({"fig4": _row([{**FIG4, "methods": ["simudyy"]}])}, "rows.fig4.sources.0.methods"),
    ({"fig4": _row([FIG4], paper={"simudy": 0.3374})}, "rows.fig4.paper.simudy"),
    ({"fig4": _row([FIG4], tolerance={"loo": 0.1})}, "rows.fig4.tolerance"),
    ({"fig4": _row([FIG4], paper="0.3374")}, "rows.fig4.paper"),
])
def test_a_bad_catalogue_names_the_file_and_the_key(reg, tmp_path, rows, key):
    cat = _catalogue(tmp_path / "bad.yaml", rows)
    with pytest.raises(SimudyError) as err:
        catalogue.plan(catalogue.load_catalogue(cat), reg, cat)
    message = str(err.value)
    assert message.startswith(f"{cat}: ") and key in message, message
    out = tmp_path / "out"
    assert run_cli("catalogue", "--registry", REGISTRY, "--catalogue", cat, "--results", tmp_path,
                   "--out-dir", out) == 2
    assert not out.exists()


def test_a_metric_that_is_not_a_number_is_an_error(reg, tmp_path):
    cat = _catalogue(tmp_path / "catalogue.yaml", {"fig4": _row([FIG4])})
    _metrics(tmp_path / "results", "fig4", "cpu", {"simudy": {"ssim": {"mean": 0.5}}})
    with pytest.raises(SimudyError, match=r"fig4/cpu/metrics.json: simudy.ssim: expected a number"):
        catalogue.build(catalogue.load_catalogue(cat), reg, tmp_path / "results", cat)


def test_an_analysis_reads_its_own_folder_and_registry_entry(reg, tmp_path):
    if "tab1" not in getattr(reg, "linearity", {}):
        pytest.skip("the registry has no linearity table tab1")
    cat = _catalogue(tmp_path / "catalogue.yaml", {"tab1": _row([{
        "analysis": "linearity.tab1", "methods": ["mlp200", "resnet18"], "metric": None,
        "paper_from": "networks.{label}.paper"}])})
    results = tmp_path / "results"
    _metrics(results, "tab1", "paper", {"mlp200": 0.92, "resnet18": 0.7})  # paper 0.9134, 0.5988
    rows, _ = catalogue.build(catalogue.load_catalogue(cat), reg, results, cat)
    assert rows[0].paper == "mlp200 0.9134 · resnet18 0.5988"
    assert rows[0].ours["paper"] == "mlp200 0.920 · resnet18 0.700"
    assert rows[0].status == "differs (paper: 1 of 2 within tolerance)"
    bad = _catalogue(tmp_path / "bad.yaml", {"tab1": _row([{
        "analysis": "linearity.tab1", "methods": ["mlp200"], "metric": None, "paper_from": "networks.{label}.papr"}])})
    with pytest.raises(SimudyError, match=r"bad.yaml: rows.tab1.sources.0.paper_from: .*networks.mlp200.papr"):
        catalogue.plan(catalogue.load_catalogue(bad), reg, bad)


def test_a_benchmark_suite_fills_its_column_as_measured(reg, tmp_path):
    cat = _catalogue(tmp_path / "catalogue.yaml", {"tab3": _row(
        [{"bench": "tab3", "file": "projection.json", "keys": {"n20_h": "n20.reference.hours"}}],
        paper={"n20_h": 1.06})})
    results = tmp_path / "results"
    assert _statuses(reg, cat, results)["tab3"] == catalogue.NOT_RUN
    _metrics(results, "bench", "tab3", {"n20": {"reference": {"hours": 65.0}}}, name="projection.json")
    rows, _ = catalogue.build(catalogue.load_catalogue(cat), reg, results, cat)
    assert rows[0].status == "measured (cpu)"
    assert "65" in catalogue.markdown(catalogue.load_catalogue(cat), rows)
