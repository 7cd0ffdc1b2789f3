"""Bad input: one clear error naming the file, exit status 2, and nothing left half-written."""

import json
import math

import pytest
import torch

from simudy.checkpoints import import_torch_checkpoint, load_weights, save_weights
from simudy.errors import SimudyError
from tests.conftest import ROOT, reconstruct_demo, run_cli


def _expect_refusal(victim, tmp_path, capsys, message):
    code, out = reconstruct_demo(victim, tmp_path)
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_truncated_checkpoint(victim, tmp_path, capsys):
    path = victim / "thetaf.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    _expect_refusal(victim, tmp_path, capsys, f"{path}: truncated")


def test_pickle_checkpoint_is_never_unpickled(victim, tmp_path, capsys):
    path = victim / "theta0.safetensors"
    torch.save({"w": torch.zeros(2)}, path)
    _expect_refusal(victim, tmp_path, capsys, f"{path}: is a pickle/torch.save file")
    path.write_bytes(b"\x80\x04K\x01.")  # a bare pickle
    _expect_refusal(victim, tmp_path, capsys, f"{path}: is a pickle/torch.save file")


def test_not_safetensors(victim, tmp_path, capsys):
    path = victim / "thetaf.safetensors"
    path.write_text("hello, this is text and not a checkpoint at all")
    _expect_refusal(victim, tmp_path, capsys, f"{path}: truncated or not safetensors")


def test_nan_parameters(victim, tmp_path, capsys):
    path = victim / "thetaf.safetensors"
    state = load_weights(path)
    state["out.bias"][0] = math.nan
    save_weights(path, state)
    _expect_refusal(victim, tmp_path, capsys, f"{path}: tensor 'out.bias' contains NaN")


def test_theta0_and_thetaf_of_different_shapes_or_architectures(victim, tmp_path, capsys):
    path = victim / "thetaf.safetensors"
    state = load_weights(path)
    state["out.bias"] = torch.zeros(3)
    save_weights(path, state)
    _expect_refusal(victim, tmp_path, capsys, "differ in shape at 'out.bias': (10,) vs (3,)")
    del state["out.bias"]
    save_weights(path, state)
    _expect_refusal(victim, tmp_path, capsys, "hold different architectures")


def test_checkpoint_of_another_architecture_than_declared(victim, tmp_path, capsys):
    meta = json.loads((victim / "victim.json").read_text())
    meta["model_kwargs"]["hidden"] = [64]
    (victim / "victim.json").write_text(json.dumps(meta))
    _expect_refusal(victim, tmp_path, capsys, "does not fit the configured architecture")


def test_missing_metadata(victim, tmp_path, capsys):
    (victim / "victim.json").unlink()
    _expect_refusal(victim, tmp_path, capsys, f"{victim / 'victim.json'}: file not found")


def test_empty_subset_and_wrong_config_types(tmp_path, digits_file, capsys):
    reg = (ROOT / "params/experiments.yaml").read_text()
    bad = tmp_path / "experiments.yaml"
    bad.write_text(reg.replace("victim: {per_class: 2, offset: 0", "victim: {per_class: 0, offset: 0"))
    common = ["--registry", bad, "--experiment", "demo", "--profile", "smoke"]
    assert run_cli("pretrain", *common, "--data", digits_file, "--out-dir", tmp_path / "init") == 0
    code = run_cli("finetune-victim", *common, "--data", digits_file, "--init-dir", tmp_path / "init",
                   "--out-dir", tmp_path / "victim")
    assert code == 2 and "empty victim subset" in capsys.readouterr().err and not (tmp_path / "victim").exists()
    bad.write_text(reg.replace("victim: {per_class: 2, offset: 0", "victim: {per_class: two, offset: 0"))
    assert run_cli("show-config", *common) == 2
    assert f"{bad}: experiment 'demo' at profile 'smoke': victim.per_class" in capsys.readouterr().err


def test_import_checkpoint_converts_without_unpickling_code(tmp_path):
    src = tmp_path / "ckpt.pth"
    torch.save({"net": {"module.linear.weight": torch.ones(2, 2)}, "acc": 90.0}, src)
    assert import_torch_checkpoint(src, tmp_path / "w.safetensors") == 1
    assert load_weights(tmp_path / "w.safetensors")["linear.weight"].sum() == 4

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"net": Evil()}, src, _use_new_zipfile_serialization=True)
    with pytest.raises(SimudyError, match="cannot be read safely"):
        import_torch_checkpoint(src, tmp_path / "x.safetensors")
