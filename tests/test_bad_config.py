"""Bad registry values, bad --set overrides and faults at the CLI boundary: exit status 2, one
message naming the file or key and the problem, no traceback on the terminal, no output left."""

import errno
import subprocess

import pandas as pd
import pytest
import yaml

from simudy import cli
from simudy.config import read_yaml
from simudy.runstate import STATE_FILE
from tests.conftest import ROOT, run_cli

REGISTRY = ROOT / "params/experiments.yaml"
SIMUDY = ["experiments", "demo", "profiles", "cpu", "reconstruct", "attacks", "simudy"]


def _set(raw: dict, path: list[str], value) -> None:
    for key in path[:-1]:
        raw = raw.setdefault(key, {})
    raw[path[-1]] = value


def _registry_with(tmp_path, path: list[str], value):
    raw = read_yaml(REGISTRY)
    _set(raw, path, value)
    out = tmp_path / "bad.yaml"
    out.write_text(yaml.safe_dump(raw))
    return out


def _pretrain(tmp_path, registry, *extra):
    out = tmp_path / "init"
    code = run_cli("pretrain", "--registry", registry, "--experiment", "demo", "--profile", "cpu",
                   "--data", tmp_path / "unused.npz", "--out-dir", out, *extra)
    return code, out


def _assert_refused(code, out, capsys, *needles):
    err = capsys.readouterr().err
    assert code == 2, err
    for needle in needles:
        assert needle in err, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert not out.exists()


REGISTRY_CASES = {
    "infinite lr": (SIMUDY + ["lr"], float("inf"), "reconstruct.attacks.simudy.lr: Input should be a finite number"),
    "NaN lr": (SIMUDY + ["lr"], float("nan"), "reconstruct.attacks.simudy.lr: Input should be a finite number"),
    "negative init_scale": (SIMUDY + ["init_scale"], -0.1, "init_scale: Input should be greater than 0"),
    "zero sim_lr": (SIMUDY + ["sim_lr"], 0.0, "sim_lr: Input should be greater than 0"),
    "negative sim_lr": (SIMUDY + ["sim_lr"], -0.01, "sim_lr: Input should be greater than 0"),
    "zero sim_batch_size": (SIMUDY + ["sim_batch_size"], 0, "sim_batch_size: Input should be greater than or equal"),
    "beta above 1": (SIMUDY + ["betas"], [1.5, 0.9], "betas.0: Input should be less than 1"),
    "one beta": (SIMUDY + ["betas"], [0.9], "betas: List should have at least 2 items"),
    "steps as text": (SIMUDY + ["steps"], "many", "steps: Input should be a valid integer"),
    "zero steps": (SIMUDY + ["steps"], 0, "steps: Input should be greater than or equal to 1"),
    "zero clip norm": (SIMUDY + ["clip_to_norm"], 0.0, "clip_to_norm: Input should be greater than 0"),
    "negative tv weight": (SIMUDY + ["tv_weight"], -1.0, "tv_weight: Input should be greater than or equal to 0"),
    "zero n_images": (SIMUDY + ["n_images"], 0, "n_images: Input should be greater than or equal to 1"),
    "unknown attack setting": (SIMUDY + ["stepz"], 3, "reconstruct.attacks.simudy.stepz: Extra inputs"),
    "zero victim batch": (["experiments", "demo", "victim", "batch_size"], 0, "victim.batch_size"),
    "negative victim lr": (["experiments", "demo", "victim", "lr"], -0.01, "victim.lr"),
    "negative init lr": (["experiments", "demo", "init", "lr"], -1.0, "init.lr: Input should be greater than 0"),
    "momentum of 1.5": (["experiments", "demo", "init", "momentum"], 1.5, "init.momentum: Input should be less"),
    "zero hidden width": (["experiments", "demo", "init", "hidden"], [0], "init.hidden.0: Input should be greater"),
    "float epochs": (["experiments", "demo", "init", "epochs"], 2.5, "init.epochs: Input should be a valid integer"),
    "unknown method": (["experiments", "demo", "reconstruct", "methods"], ["simudy", "lo"],
                       "methods ['lo'] are not configured under attacks"),
    "unknown active profile": (["active_profile"], "cpuu", "active_profile 'cpuu': experiment 'binary' has no such"),
}


@pytest.mark.bad_input
@pytest.mark.parametrize("case", REGISTRY_CASES)
def test_bad_registry_value(tmp_path, capsys, case):
    path, value, message = REGISTRY_CASES[case]
    registry = _registry_with(tmp_path, path, value)
    code, out = _pretrain(tmp_path, registry)
    _assert_refused(code, out, capsys, str(registry), message)
    assert len(capsys.readouterr().err) < 400  # never the whole registry or section


REGISTRY_TEXTS = {
    "duplicate key": ("datasets: {}\ndatasets: {}\n", "key 'datasets' appears twice in one mapping"),
    "not YAML": ("active_profile: [cpu\n", "not valid YAML"),
    "a list": ("- cpu\n- paper\n", "expected a mapping at the top level"),
    "not UTF-8": (b"\xff\xfe\x00bad", "not valid YAML"),
}


@pytest.mark.bad_input
@pytest.mark.parametrize("case", REGISTRY_TEXTS)
def test_unreadable_registry(tmp_path, capsys, case):
    text, message = REGISTRY_TEXTS[case]
    registry = tmp_path / "bad.yaml"
    registry.write_bytes(text if isinstance(text, bytes) else text.encode())
    code, out = _pretrain(tmp_path, registry)
    _assert_refused(code, out, capsys, str(registry), message)


@pytest.mark.bad_input
def test_duplicate_key_deep_in_the_registry(tmp_path, capsys):
    text = REGISTRY.read_text().replace("      smoke: {init: {}, victim: {},\n",
                                        "      smoke: {init: {}, victim: {}, victim: {},\n", 1)
    registry = tmp_path / "bad.yaml"
    registry.write_text(text)
    code, out = _pretrain(tmp_path, registry)
    _assert_refused(code, out, capsys, str(registry), "key 'victim' appears twice", "line ")


@pytest.mark.bad_input
@pytest.mark.parametrize("registry", ["missing.yaml", "."])
def test_registry_path_that_is_no_file(tmp_path, capsys, registry):
    code, out = _pretrain(tmp_path, tmp_path / registry)
    _assert_refused(code, out, capsys, str(tmp_path / registry))


SET_CASES = {
    "no value": ("reconstruct.attacks.simudy.steps", "expected SECTION.KEY=VALUE"),
    "unknown section": ("attacks.simudy.steps=3", "expected SECTION.KEY=VALUE"),
    "empty key part": ("reconstruct..steps=3", "expected SECTION.KEY=VALUE"),
    "bad YAML value": ("reconstruct.attacks.simudy.betas=[0.9", "the value is not valid YAML"),
    "unknown key": ("reconstruct.attacks.simudy.stepz=3", "reconstruct.attacks.simudy.stepz: Extra inputs"),
    "infinite lr": ("reconstruct.attacks.simudy.lr=.inf", "reconstruct.attacks.simudy.lr: Input should be a finite"),
    "beta 1.5": ("reconstruct.attacks.simudy.betas=[1.5, 0.9]", "betas.0: Input should be less than 1"),
    "text for a number": ("victim.lr='0.01'", "victim.lr: Input should be a valid number"),
}


@pytest.mark.bad_input
@pytest.mark.parametrize("case", SET_CASES)
def test_bad_set_override(tmp_path, capsys, case):
    item, message = SET_CASES[case]
    code, out = _pretrain(tmp_path, REGISTRY, "--set", item)
    _assert_refused(code, out, capsys, message)


def test_set_overrides_one_setting():
    base = cli.load_experiment("demo", "cpu", REGISTRY)
    changed = cli.load_experiment("demo", "cpu", REGISTRY, ["reconstruct.attacks.simudy.steps=7",
                                                            "reconstruct.attacks.simudy.betas=[0.5, 0.6]"])
    assert changed.reconstruct.attacks["simudy"].steps == 7
    assert changed.reconstruct.attacks["simudy"].betas == [0.5, 0.6]
    assert changed.victim == base.victim and changed.reconstruct.attacks["simudy"].lr == base.reconstruct.attacks[
        "simudy"].lr


# -- faults at the CLI boundary ----------------------------------------------------------------


def test_an_unexpected_exception_is_one_line_with_the_traceback_in_the_log(tmp_path, capsys, monkeypatch):
    def broken(a):
        raise TypeError("unsupported operand")

    monkeypatch.setattr(cli, "cmd_show_config", broken)
    log = tmp_path / "run.log"
    code = run_cli("--log", log, "show-config", "--experiment", "demo", "--profile", "cpu")
    err = capsys.readouterr().err
    assert code == 2
    assert "unexpected TypeError: unsupported operand" in err and str(log) in err
    assert "Traceback" not in err
    assert "Traceback (most recent call last)" in log.read_text()


def test_a_full_disk_is_named(tmp_path, capsys, monkeypatch):
    def full(a):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out.npz"))

    monkeypatch.setattr(cli, "cmd_show_config", full)
    code = run_cli("show-config", "--experiment", "demo", "--profile", "cpu")
    assert code == 2
    assert f"{tmp_path / 'out.npz'}: no space left on device" in capsys.readouterr().err


def test_a_log_on_a_full_disk_fails_the_command(capsys):
    code = run_cli("--log", "/dev/full", "show-config", "--experiment", "demo", "--profile", "cpu")
    assert code == 2
    assert "/dev/full: cannot write the log" in capsys.readouterr().err


@pytest.mark.bad_input
def test_a_diverging_attack_stops_and_keeps_its_last_good_snapshot(tmp_path, victim, capsys):
    out, work = tmp_path / "out", tmp_path / "work"
    code = run_cli("reconstruct", "--registry", REGISTRY, "--experiment", "demo", "--profile", "smoke",
                   "--method", "simudy", "--victim-dir", victim, "--out-dir", out, "--work-dir", work,
                   "--set", "reconstruct.attacks.simudy.lr=1e30",
                   "--set", "reconstruct.attacks.simudy.snapshot_every=1")
    err = capsys.readouterr().err
    assert code == 2
    assert "the optimisation diverged" in err and "at step " in err and str(work) in err
    assert not out.exists()
    assert (work / STATE_FILE).exists()


def _mount_tmpfs(path, size: str) -> bool:
    path.mkdir()
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                        capture_output=True).returncode == 0
    return ok


def test_a_full_disk_during_reconstruct_loses_nothing(tmp_path, victim, capsys):
    """Outputs on a full tmpfs: a clean error naming the path, nothing promoted, and the rerun after
    space is freed resumes from the kept state to the result of a run that never failed."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "64k"):
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        filler = disk / "filler"
        filler.write_bytes(b"\0" * (60 * 1024))
        args = ["reconstruct", "--registry", REGISTRY, "--experiment", "demo", "--profile", "smoke",
                "--method", "simudy", "--victim-dir", victim, "--work-dir", tmp_path / "work"]
        code = run_cli(*args, "--out-dir", disk / "out")
        err = capsys.readouterr().err
        assert code == 2 and f"{disk / 'out'}" in err and "No space left on device" in err, err
        assert not list((disk / "out").glob("*")) if (disk / "out").exists() else True
        assert (tmp_path / "work" / STATE_FILE).exists()
        filler.unlink()
        assert run_cli(*args, "--out-dir", disk / "out") == 0
        assert "resuming from the snapshot at step 20" in capsys.readouterr().err
        assert run_cli(*args[:-1], tmp_path / "work2", "--out-dir", tmp_path / "ref") == 0
        assert (disk / "out/reconstruction.safetensors").read_bytes() == (tmp_path / "ref/reconstruction.safetensors"
                                                                           ).read_bytes()
        losses = [pd.read_csv(d / "loss.csv").drop(columns="seconds") for d in (disk / "out", tmp_path / "ref")]
        pd.testing.assert_frame_equal(*losses)
    finally:
        subprocess.run(["umount", str(disk)], check=False)
