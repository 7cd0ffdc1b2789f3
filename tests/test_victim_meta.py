"""victim.json through `VictimMeta`: the pipeline's bundles read back unchanged, a user's needs
only the description, every bad value is one error naming the file and the key, and random
JSON gives that error or a valid model, nothing else."""

import copy
import json
import math
import shutil

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simudy.errors import SimudyError
from simudy.victim import VictimMeta, check_meta, load_victim, parse_json, read_meta
from tests.conftest import ROOT, run_cli

SOURCE = "some/victim.json"
TRAINING = {"epochs": 20, "batch_size": 20, "lr": 0.01, "optimizer": "sgd", "momentum": 0.0, "weight_decay": 0.0,
            "shuffle": False, "model_mode": "eval", "loss": "cross_entropy"}
# As make_victim writes it (small).
PIPELINE = {
    "schema": 1, "arch": "mlp", "model_kwargs": {"hidden": [16]}, "image_shape": [1, 8, 8], "num_outputs": 2,
    "num_classes": 2, "class_names": ["0", "1"], "mean": [0.3], "std": [0.37], "n_images": 4,
    "training": TRAINING,
    "subset": {"dataset": "digits", "split": "train", "per_class": 2, "offset": 0, "indices": [0, 1, 2, 3],
               "source_ids": ["0", "1", "2", "3"]},
    "init": {"arch": "mlp", "seed": 0, "bias": None}, "epoch_losses": [0.7, 0.69],
}
# What a user who trained the model elsewhere knows.
OWN = {"arch": "mlp", "model_kwargs": {"hidden": [16]}, "image_shape": [1, 8, 8], "num_classes": 10,
       "mean": [0.3], "std": [0.37], "n_images": 20, "training": {"epochs": 20, "batch_size": 20, "lr": 0.01}}


def _problem(raw) -> str:
    with pytest.raises(SimudyError) as err:
        check_meta(raw, SOURCE)
    return str(err.value)


def _at(raw: dict, path: str):
    """The container holding a dotted key, and the key's last part."""
    *parents, last = path.split(".")
    for key in parents:
        raw = raw[key]
    return raw, last


def _set(path, value):
    def edit(raw):
        node, last = _at(raw, path)
        node[last] = value
    return edit


def _drop(path):
    def edit(raw):
        node, last = _at(raw, path)
        del node[last]
    return edit


def _with(base: dict, path: str, value) -> dict:
    out = copy.deepcopy(base)
    _set(path, value)(out)
    return out


def test_pipeline_bundle_reads_back_unchanged(demo_victim):
    raw, meta = read_meta(demo_victim / "victim.json")
    assert meta.dump() == raw
    victim = load_victim(demo_victim)
    assert victim.meta == raw and victim.num_outputs == 10 and victim.image_shape == (1, 8, 8)


def test_own_victim_needs_only_the_description():
    meta = check_meta(OWN, SOURCE)
    assert meta.outputs == 10 and meta.training.loss == "cross_entropy"
    assert meta.dump() == {"schema": 1, **OWN}  # nothing filled in but the schema
    assert check_meta(PIPELINE, SOURCE).dump() == PIPELINE


def test_example_victim_json_is_valid():
    raw, meta = read_meta(ROOT / "examples/victim.json")
    assert meta.arch == "mlp" and meta.image_shape == [1, 8, 8]


def test_integers_are_numbers_but_numbers_are_not_integers():
    assert check_meta(_with(OWN, "training.lr", 1), SOURCE).training.lr == 1.0
    assert "training.epochs: must be an integer >= 1 (got 20.0)" in _problem(_with(OWN, "training.epochs", 20.0))
    assert "n_images: must be an integer from 1 to 1000000 (got True)" in _problem(_with(OWN, "n_images", True))


def test_logistic_models_have_one_output_and_two_classes():
    binary = _with(_with(_with(OWN, "num_classes", 2), "num_outputs", 1), "training.loss", "logistic")
    assert check_meta(binary, SOURCE).outputs == 1
    assert "training.loss: a model with 1 output(s) cannot train with 'cross_entropy'" in _problem(
        _with(binary, "training.loss", "cross_entropy"))
    assert "num_outputs: must be num_classes (10)" in _problem(_with(OWN, "num_outputs", 1))
    assert "training.loss: a model with 10 output(s)" in _problem(_with(OWN, "training.loss", "logistic"))


def test_absurd_sizes_are_refused_before_anything_is_allocated():
    wide = _problem(_with(OWN, "model_kwargs.hidden", [1_000_000, 1_000_000]))
    assert f"{SOURCE}: model_kwargs.hidden: makes 'mlp' a model of 1e+12 parameters" in wide
    huge_images = _with(_with(_with(OWN, "image_shape", [16, 4096, 4096]), "mean", [0.3] * 16), "std", [0.3] * 16)
    assert "image_shape: makes 'mlp' a model of" in _problem(_with(huge_images, "n_images", 1))
    assert "n_images: 20 images of shape [16, 4096, 4096]" in _problem(huge_images)
    resnet = _with(_with(OWN, "arch", "resnet18"), "model_kwargs", {"width": 100_000})
    assert "model_kwargs.width: makes 'resnet18' a model of" in _problem(resnet)
    assert "model_kwargs.hidden: not a setting of 'resnet18'; its settings: ['width']" in _problem(
        _with(OWN, "arch", "resnet18"))


def test_several_problems_in_one_message():
    raw = _with(_with(OWN, "training.lr", "0.01"), "n_images", -5)
    message = _problem(raw)
    assert "\n" not in message and "n_images: must be" in message and "training.lr: must be" in message


@pytest.mark.parametrize("section", ["model_kwargs", "training"])
def test_a_key_that_is_not_plain_text_is_quoted_and_keeps_the_message_on_one_line(section):
    raw = copy.deepcopy(PIPELINE)
    raw[section]["\nbad"] = 1
    with pytest.raises(SimudyError) as err:
        check_meta(raw, SOURCE)
    assert f"{section}.'\\nbad': " in str(err.value) and "\n" not in str(err.value)


def test_recipe_the_simulation_leaves_out_is_warned_about(demo_victim, tmp_path, caplog):
    victim = tmp_path / "victim"
    shutil.copytree(demo_victim, victim)
    raw = json.loads((victim / "victim.json").read_text())
    raw["training"].update(momentum=0.9, shuffle=True)
    (victim / "victim.json").write_text(json.dumps(raw))
    load_victim(victim)
    assert "training.momentum is 0.9, training.shuffle is true; SimuDy simulates plain SGD" in caplog.text


# -- property tests ----------------------------------------------------------------------------

KEYS = sorted({*PIPELINE, *TRAINING, *PIPELINE["subset"], "hidden", "width", "bias", "centred"})
scalars = (st.none() | st.booleans() | st.integers() | st.integers(-3, 30) | st.floats()
           | st.text(max_size=8) | st.sampled_from(["mlp", "resnet18", "sgd", "eval", "logistic", "first"]))


def _json(leaves: int):
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=6),
                        max_leaves=leaves)


json_values = _json(12)


def _one_error_or_valid(raw) -> None:
    try:
        meta = check_meta(raw, SOURCE)
    except SimudyError as err:
        message = str(err)
        assert message.startswith(f"{SOURCE}: ") and "\n" not in message
        return
    assert isinstance(meta, VictimMeta)
    assert check_meta(meta.dump(), SOURCE) == meta


@given(json_values)
def test_random_json_gives_one_error_or_a_valid_model(raw):
    _one_error_or_valid(raw)


def _paths(node, prefix=()):
    """Every place in a JSON document: (container path, key or index)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, child in items:
        yield prefix, key
        yield from _paths(child, (*prefix, key))


def _retypes(value):
    out = [None, str(value), [value], {"value": value}, True, -1, 0, 1e400, "NaN"]
    if isinstance(value, int) and not isinstance(value, bool):
        out += [float(value), value * 10**9, -value]
    if isinstance(value, float) and math.isfinite(value):
        out += [int(value), -value, 0.0]
    if isinstance(value, list):
        out += [value[:-1], value + value, [str(v) for v in value]]
    return out


small_json = _json(3)
# Strategies built once (building them per draw is most of the time): an index into a list known
# only at run time, how many mutations, which.
choice = st.integers(0, 2**16)
rounds = st.integers(1, 3)
actions = st.sampled_from(["drop", "replace", "retype"])


@given(st.sampled_from([PIPELINE, OWN]), st.data())
def test_mutated_victim_json_gives_one_error_or_a_valid_model(base, data):
    raw = copy.deepcopy(base)
    for _ in range(data.draw(rounds)):
        places = list(_paths(raw))
        if not places:
            break
        parent_path, key = places[data.draw(choice) % len(places)]
        parent = raw
        for part in parent_path:
            parent = parent[part]
        action = data.draw(actions)
        if action == "drop":
            del parent[key]
        elif action == "replace":
            parent[key] = data.draw(small_json)
        else:
            options = _retypes(parent[key])
            parent[key] = options[data.draw(choice) % len(options)]
    _one_error_or_valid(raw)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40) | json_values.map(json.dumps))
def test_random_text_gives_one_error_or_a_valid_model(text):
    try:
        raw = parse_json(text, SOURCE)
    except SimudyError as err:
        assert str(err).startswith(f"{SOURCE}: not valid JSON")
        return
    _one_error_or_valid(raw)


# -- bad-input corpus: `simudy reconstruct` on a victim with a bad victim.json ------------------


BAD_META = [
    ("missing-mean", _drop("mean"), "mean: missing"),
    ("missing-std", _drop("std"), "std: missing"),
    ("missing-n_images", _drop("n_images"), "n_images: missing"),
    ("missing-lr", _drop("training.lr"), "training.lr: missing"),
    ("missing-arch", _drop("arch"), "arch: missing"),
    ("image_shape-text", _set("image_shape", "1x8x8"), "image_shape: must be three integers [C, H, W]"),
    ("image_shape-two", _set("image_shape", [8, 8]), "image_shape: must be three integers [C, H, W]"),
    ("image_shape-zero", _set("image_shape", [1, 0, 8]), "image_shape: must be three integers [C, H, W]"),
    ("num_classes-word", _set("num_classes", "ten"), "num_classes: must be an integer from 2 to 100000 (got 'ten')"),
    ("num_classes-zero", _set("num_classes", 0), "num_classes: must be an integer from 2 to 100000 (got 0)"),
    ("training-list", _set("training", [1, 2]), "training: must be a JSON object (got [1, 2])"),
    ("training-null", _set("training", None), "training: must be a JSON object (got None)"),
    ("n_images-negative", _set("n_images", -5), "n_images: must be an integer from 1 to 1000000 (got -5)"),
    ("n_images-fraction", _set("n_images", 20.5), "n_images: must be an integer from 1 to 1000000 (got 20.5)"),
    ("n_images-huge", _set("n_images", 10**7), "n_images: must be an integer from 1 to 1000000"),
    ("lr-text", _set("training.lr", "0.01"), "training.lr: must be a finite number > 0 (got '0.01')"),
    ("lr-infinite", _set("training.lr", math.inf), "training.lr: must be a finite number > 0 (got inf)"),
    ("lr-zero", _set("training.lr", 0), "training.lr: must be a finite number > 0 (got 0)"),
    ("batch_size-zero", _set("training.batch_size", 0), "training.batch_size: must be an integer >= 1 (got 0)"),
    ("batch_size-negative", _set("training.batch_size", -1), "training.batch_size: must be an integer >= 1 (got -1)"),
    ("epochs-text", _set("training.epochs", "20"), "training.epochs: must be an integer >= 1 (got '20')"),
    ("momentum-negative", _set("training.momentum", -0.1), "training.momentum: must be a finite number >= 0"),
    ("loss-unknown", _set("training.loss", "mse"), "training.loss: should be 'cross_entropy' or 'logistic'"),
    ("optimizer-adam", _set("training.optimizer", "adam"), "training.optimizer: should be 'sgd' (got 'adam')"),
    ("training-unknown-key", _set("training.nesterov", True), "training.nesterov: unknown key; known: ["),
    ("mean-text", _set("mean", "0.5"), "mean: must be a list of finite numbers (got '0.5')"),
    ("mean-nan", _set("mean", [math.nan]), "mean: must be a list of finite numbers (got [nan])"),
    ("mean-channels", _set("mean", [0.1, 0.2]), "mean: 2 value(s) for the 1 channel(s) of image_shape"),
    ("std-zero", _set("std", [0.0]), "std: must be a list of finite numbers > 0 (got [0.0])"),
    ("arch-unknown", _set("arch", "vgg16"),
     "arch: unknown; known: ['bert', 'mlp', 'resnet18', 'resnet50', 'vit'] (got 'vgg16')"),
    ("model_kwargs-unknown", _set("model_kwargs.depth", 3), "model_kwargs.depth: not a setting of 'mlp'; its"),
    ("model_kwargs-text", _set("model_kwargs", "hidden=512"), "model_kwargs: must be a JSON object"),
    ("hidden-text", _set("model_kwargs.hidden", "512"), "model_kwargs.hidden: must be a list of at most 256 widths"),
    ("bias-word", _set("model_kwargs.bias", "none"), 'model_kwargs.bias: must be true, false or "first"'),
    # 2·10¹² parameters: terabytes, were it allocated.
    ("width-absurd", _set("model_kwargs.hidden", [1_000_000, 1_000_000]),
     "model_kwargs.hidden: makes 'mlp' a model of 1e+12 parameters, more than simudy takes (2e+08)"),
    ("outputs-binary-mismatch", _set("num_outputs", 1), "num_outputs: must be num_classes (10), or 1"),
    ("class_names-count", _set("class_names", ["0", "1"]), "class_names: 2 names for num_classes 10"),
    ("subset-count", _set("subset.indices", [0]), "subset.indices: 1 entries for n_images 20"),
    ("unknown-key", _set("learning_rate", 0.01), "learning_rate: unknown key; known: ['arch',"),
    ("schema-future", _set("schema", 2), "schema: must be 1, the version this simudy reads (got 2)"),
]
BAD_TEXT = [
    ("not-json", b'{"arch": "mlp",', "not valid JSON"),
    ("empty", b"", "not valid JSON"),
    ("top-level-list", b"[1, 2]", "must be a JSON object of victim settings, got a list"),
    ("top-level-string", b'"victim"', "must be a JSON object of victim settings, got a string"),
    ("not-utf8", b"\xff\xfe\x00{", "not valid JSON (not UTF-8 text)"),
    ("too-deep", b"[" * 100_000, "not valid JSON"),
]


def _reconstruct_is_refused(victim, tmp_path, capsys, message):
    out, work = tmp_path / "out", tmp_path / "work"
    code = run_cli("reconstruct", "--registry", ROOT / "params/experiments.yaml", "--experiment", "demo",
                   "--profile", "smoke", "--method", "simudy", "--victim-dir", victim, "--out-dir", out,
                   "--work-dir", work)
    err = capsys.readouterr().err
    assert code == 2
    assert f"{victim / 'victim.json'}: {message}" in err
    assert "Traceback" not in err and "error: unexpected" not in err
    assert not out.exists() and not work.exists()


@pytest.mark.bad_input
@pytest.mark.parametrize("edit,message", [c[1:] for c in BAD_META], ids=[c[0] for c in BAD_META])
def test_reconstruct_refuses_bad_victim_json(victim, tmp_path, capsys, edit, message):
    raw = json.loads((victim / "victim.json").read_text())
    edit(raw)
    (victim / "victim.json").write_text(json.dumps(raw))
    _reconstruct_is_refused(victim, tmp_path, capsys, message)


@pytest.mark.bad_input
@pytest.mark.parametrize("content,message", [c[1:] for c in BAD_TEXT], ids=[c[0] for c in BAD_TEXT])
def test_reconstruct_refuses_victim_json_that_is_no_object(victim, tmp_path, capsys, content, message):
    (victim / "victim.json").write_bytes(content)
    _reconstruct_is_refused(victim, tmp_path, capsys, message)
