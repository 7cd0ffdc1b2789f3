"""The benchmark measures every mode against the reference on the same case, in its own process."""

import pytest
import yaml

from simudy.bench import load_settings, run_benchmark, run_precision_check, write_projection
from simudy.errors import SimudyError

SETTINGS = {
    "modes": {"reference": {"reference": True}, "lean": {"remat": 1}},
    "cases": {"tiny": {"kind": "cost", "experiment": "fig4", "profile": "smoke", "n_images": 4,
                       "image_shape": [3, 4, 4], "num_classes": 10, "steps": 1}},
    "runs": {"tiny": ["reference", "lean"]},
}


@pytest.mark.slow
def test_benchmark_writes_ratios_and_agreement(tmp_path):
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(SETTINGS))
    table = run_benchmark(path, tmp_path / "out").set_index("mode")
    assert table.loc["reference", "seconds_per_step_ratio"] == 1.0
    assert table.loc["lean", "seconds_per_step"] > 0 and table.loc["lean", "peak_mb"] > 0
    assert table.loc["lean", "grad_rel_diff"] < 1e-6  # rematerialisation is exact
    assert "lean" in (tmp_path / "out" / "bench.md").read_text()


def test_settings_naming_an_unknown_mode_are_rejected(tmp_path):
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump({**SETTINGS, "runs": {"tiny": ["reference", "turbo"]}}))
    with pytest.raises(SimudyError, match="turbo"):
        load_settings(path)


def test_precision_check_reads_modes_against_float64(tmp_path):
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump({**SETTINGS, "precision_check": {"case": "tiny", "modes": ["reference", "lean"]}}))
    table = run_precision_check(path, tmp_path / "out").set_index("mode")
    errors = table["grad_rel_error_vs_float64"]
    assert 0 < errors["reference"] < 1e-4 and 0 < errors["lean"] < 1e-4  # float32 rounding, nothing more
    assert (tmp_path / "out" / "precision.md").exists()


def test_precision_check_must_name_a_known_case(tmp_path):
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump({**SETTINGS, "precision_check": {"case": "huge", "modes": ["reference"]}}))
    with pytest.raises(SimudyError, match="precision_check"):
        load_settings(path)


def test_projection_scales_the_measured_step_to_a_full_run_beside_the_paper(tmp_path):
    path = tmp_path / "settings.yaml"
    projection = {"steps": 36000, "paper": {4: {"memory_mb": 100, "hours": 2.0}}}
    path.write_text(yaml.safe_dump({**SETTINGS, "projection": projection}))
    bench = tmp_path / "bench.csv"
    bench.write_text("case,mode,seconds_per_step,peak_mb,device,error\n"
                     "tiny,reference,0.5,900,cpu,\ntiny,lean,,,,exit 137\n")
    table = write_projection(path, bench, tmp_path).set_index("mode")
    assert table.loc["reference", "hours_for_36000_steps"] == pytest.approx(5.0)
    assert (table.loc["reference", "paper_memory_mb"], table.loc["reference", "paper_hours"]) == (100, 2.0)
    assert table.loc["lean", "device"] == "exit 137"  # a failed measurement stays visible
    assert "36000 steps" in (tmp_path / "projection.md").read_text()
    path.write_text(yaml.safe_dump(SETTINGS))
    with pytest.raises(SimudyError, match="no projection section"):
        write_projection(path, bench, tmp_path)
