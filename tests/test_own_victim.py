"""Attacking your own model: a plain torch training script's checkpoints and images, through the
README's commands (import-victim, describe-victim, reconstruct with --score-dir), and every bad file or
flag on the way refused with one message and nothing written."""

import json
import re
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from simudy.checkpoints import load_weights, save_weights
from simudy.data import load_dataset, select_subset
from simudy.describe import import_victim
from tests.conftest import ROOT, run_cli

# The training script a user might have: torch only, an MLP with the registry's `mlp` layout.
TRAIN_SCRIPT = '''
import torch
from torch import nn

torch.manual_seed(0)
data = torch.load("train.pt", weights_only=True)
x = ((data["images"].float() / 255 - 0.3) / 0.37)[:, None]  # [N, 1, 8, 8], normalised
y = data["labels"]


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.ModuleList([nn.Linear(64, 32)])
        self.out = nn.Linear(32, 10)

    def forward(self, x):
        x = x.flatten(1)
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return self.out(x)


model = MLP().eval()
torch.save(model.state_dict(), "before.pt")
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for epoch in range(20):  # plain SGD, batches of 20 in order
    for start in range(0, len(x), 20):
        loss = nn.functional.cross_entropy(model(x[start:start + 20]), y[start:start + 20])
        opt.zero_grad()
        loss.backward()
        opt.step()
torch.save(model.state_dict(), "after.pt")
'''


@pytest.fixture(scope="session")
def trained(tmp_path_factory, digits_file):
    """The user's files: train.npz / train.pt (20 greyscale digits in training order), the
    script, and before.pt / after.pt from running it."""
    root = tmp_path_factory.mktemp("own")
    ds = load_dataset(digits_file, split="train")
    rows = select_subset(ds.labels, 2, 0, 10)
    images, labels = ds.images[rows][..., 0], ds.labels[rows]
    np.savez(root / "train.npz", images=images, labels=labels)
    torch.save({"images": torch.from_numpy(images), "labels": torch.from_numpy(labels)}, root / "train.pt")
    (root / "train.py").write_text(TRAIN_SCRIPT)
    subprocess.run([sys.executable, "train.py"], cwd=root, check=True, capture_output=True)
    return root


@pytest.fixture
def user_dir(tmp_path, trained, monkeypatch):
    """A working directory with the user's files, the registry and the example victim.json."""
    for name in ("train.npz", "before.pt", "after.pt"):
        shutil.copy(trained / name, tmp_path / name)
    for name in ("params/experiments.yaml", "examples/victim.json"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def readme_commands() -> list[list[str]]:
    """The commands of the README's own-checkpoints example, as argument lists."""
    section = (ROOT / "README.md").read_text().split("## Your own checkpoints", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line) for line in block.replace("\\\n", " ").splitlines() if line.strip()]


@pytest.mark.slow  # an end-to-end run: a training script, then the README's three commands
def test_readme_commands_attack_a_model_trained_by_a_plain_torch_script(user_dir):
    commands = readme_commands()
    assert [c[:2] for c in commands] == [["simudy", "import-victim"], ["simudy", "describe-victim"],
                                         ["simudy", "reconstruct"]]
    for command in commands:
        args = command[1:]
        if args[0] == "reconstruct":  # seconds, not the profile's length
            args += ["--set", "reconstruct.attacks.simudy.steps=10"]
        assert run_cli(*args) == 0, command
    meta = json.loads((user_dir / "my_victim/victim.json").read_text())
    assert meta["image_shape"] == [1, 8, 8] and meta["n_images"] == 20 and meta["model_kwargs"] == {"hidden": [32]}
    truth = load_dataset(user_dir / "my_victim/truth.npz")
    with np.load(user_dir / "train.npz") as arrays:
        assert np.array_equal(truth.images[..., 0], arrays["images"])
        assert np.array_equal(truth.labels, arrays["labels"])
    metrics = json.loads((user_dir / "out/eval/metrics.json").read_text())
    assert metrics["n_train"] == metrics["n_recon"] == 20
    assert -1 <= metrics["ssim"] <= 1 and np.isfinite(metrics["psnr_pixel"])


def test_template_with_overrides_gives_the_same_victim(user_dir):
    describe_flags = readme_commands()[1][2:]
    assert run_cli("import-victim", "--theta0", "before.pt", "--thetaf", "after.pt", "--victim-dir", "a") == 0
    shutil.copytree("a", "b")
    assert run_cli("describe-victim", "--victim-dir", "a", *describe_flags[2:]) == 0
    assert run_cli("describe-victim", "--victim-dir", "b", "--from", "examples/victim.json",
                   "--images", "train.npz") == 0
    a, b = (json.loads((user_dir / d / "victim.json").read_text()) for d in "ab")
    assert b.pop("class_names") == [str(c) for c in range(10)]
    assert {**a, "training": {}} == {**b, "training": {}}
    assert b["training"] == {**a["training"], "optimizer": "sgd", "momentum": 0.0, "weight_decay": 0.0,
                             "shuffle": False, "model_mode": "eval"}


def test_image_folder_is_read_in_training_order(user_dir):
    with np.load("train.npz") as arrays:
        images, labels = arrays["images"], arrays["labels"]
    for i, (image, label) in enumerate(zip(images, labels)):
        (user_dir / "folder" / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(user_dir / "folder" / str(label) / f"{i}.png")  # 2.png before 10.png
    import_victim("before.pt", "after.pt", "v")
    assert run_cli("describe-victim", "--victim-dir", "v", "--from", "examples/victim.json",
                   "--images", "folder") == 0
    truth = load_dataset("v/truth.npz")
    assert truth.images.shape == (20, 8, 8, 1)
    assert np.array_equal(truth.images[..., 0], images) and np.array_equal(truth.labels, labels)
    assert truth.source_ids[:3].tolist() == [f"{labels[i]}/{i}.png" for i in range(3)]


# -- bad-input corpus: import-victim and describe-victim ---------------------------------------

DESCRIBE = {"--images": ["train.npz"], "--arch": ["mlp"], "--model-kwargs": ['{"hidden": [32]}'],
            "--num-classes": ["10"], "--mean": ["0.3"], "--std": ["0.37"], "--epochs": ["20"],
            "--batch-size": ["20"], "--lr": ["0.01"]}


def _write_npz(**arrays):
    def make(d):
        np.savez(d / "bad.npz", **arrays)
        return {"--images": ["bad.npz"]}
    return make


def _folder(files: dict):
    """A folder of images: relative path -> (height, width) of a black image, or raw bytes."""
    def make(d):
        for rel, content in files.items():
            (d / "folder" / rel).parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                (d / "folder" / rel).write_bytes(content)
            else:
                Image.fromarray(np.zeros(content, np.uint8)).save(d / "folder" / rel)
        return {"--images": ["folder"]}
    return make


def _template(content: str):
    def make(d):
        (d / "template.json").write_text(content)
        return {"--from": ["template.json"]}
    return make


def _flags(**flags):
    return lambda d: {f"--{k.replace('_', '-')}": v if isinstance(v, list) else [v] for k, v in flags.items()}


def _without(*flags):
    return lambda d: dict.fromkeys(flags)


def _same_thetas(d):
    shutil.copy(d / "v/theta0.safetensors", d / "v/thetaf.safetensors")
    return {}


def _no_thetas(d):
    (d / "v/theta0.safetensors").unlink()
    return {}


LR = "training.lr (--lr): must be a finite number > 0"
BAD_DESCRIBE = [
    ("lr-word", _flags(lr="abc"), f"{LR} (got 'abc')"),
    ("lr-negative", _flags(lr="-0.01"), f"{LR} (got -0.01)"),
    ("lr-missing", _without("--lr"), "training.lr (--lr): missing"),
    ("batch_size-zero", _flags(batch_size="0"), "training.batch_size (--batch-size): must be an integer >= 1 (got 0)"),
    ("epochs-fraction", _flags(epochs="2.5"), "training.epochs (--epochs): must be an integer >= 1 (got 2.5)"),
    ("num_classes-missing", _without("--num-classes"), "num_classes (--num-classes): missing"),
    ("num_classes-one", _flags(num_classes="1"), "num_classes (--num-classes): must be an integer from 2"),
    ("class_names-short", _flags(class_names=["a", "b"]), "class_names (--class-names): 2 names for num_classes 10"),
    ("mean-two-channels", _flags(mean=["0.3", "0.3"]), "mean (--mean): 2 value(s) for the 1 channel(s)"),
    ("std-zero", _flags(std="0"), "std (--std): must be a list of finite numbers > 0 (got [0])"),
    ("loss-logistic-ten-classes", _flags(loss="logistic"), "training.loss (--loss): a model with 10 output(s)"),
    ("optimizer-adam", _flags(optimizer="adam"), "training.optimizer (--optimizer): should be 'sgd' (got 'adam')"),
    ("arch-unknown", _flags(arch="vgg"),
     "arch (--arch): unknown; known: ['bert', 'mlp', 'resnet18', 'resnet50', 'vit'] (got 'vgg')"),
    ("arch-other-settings", _flags(arch="resnet18"),
     "model_kwargs.hidden (--model-kwargs): not a setting of 'resnet18'"),
    ("model_kwargs-not-json", _flags(model_kwargs="{hidden: 32"),
     "model_kwargs (--model-kwargs): must be a JSON object (got '{hidden: 32')"),
    ("model_kwargs-unknown", _flags(model_kwargs='{"depth": 3}'),
     "model_kwargs.depth (--model-kwargs): not a setting of 'mlp'"),
    ("width-absurd", _flags(model_kwargs='{"hidden": [1000000, 1000000]}'),
     "model_kwargs.hidden (--model-kwargs): makes 'mlp' a model of 1e+12 parameters"),
    ("thetas-other-architecture", _flags(model_kwargs='{"hidden": [64]}'),
     "theta0.safetensors: does not fit the configured architecture"),
    ("thetas-identical", _same_thetas, "hold the same parameters"),
    ("thetas-missing", _no_thetas, "theta0.safetensors: checkpoint not found"),
    ("image_shape-contradicts-images", _flags(image_shape=["3", "8", "8"]),
     "train.npz: the images give image_shape [1, 8, 8], the flag --image-shape [3, 8, 8]"),
    ("n_images-contradicts-images", _flags(n_images="30"), "train.npz: the images give n_images 20"),
    ("images-missing", _flags(images="nowhere.npz"), "nowhere.npz: file not found"),
    ("images-not-npz", _flags(images="after.pt"), "after.pt: expected an .npz of images and labels"),
    ("images-float", _write_npz(images=np.zeros((20, 8, 8), np.float32), labels=np.zeros(20, np.int64)),
     "bad.npz: images must be uint8 [N, H, W, C] or [N, H, W] with pixels 0-255, got float32 [20, 8, 8]"),
    ("images-without-labels", _write_npz(images=np.zeros((20, 8, 8), np.uint8)), "bad.npz: lacks ['labels']"),
    ("labels-count", _write_npz(images=np.zeros((20, 8, 8), np.uint8), labels=np.zeros(19, np.int64)),
     "bad.npz: labels must be integers [N] for the 20 images, got int64 [19]"),
    ("labels-beyond-classes", _write_npz(images=np.zeros((20, 8, 8), np.uint8), labels=np.full(20, 12)),
     "bad.npz: label 12 for 10 classes"),
    ("labels-negative", _write_npz(images=np.zeros((20, 8, 8), np.uint8), labels=np.full(20, -1)),
     "bad.npz: negative label -1"),
    ("folder-sizes-differ", _folder({"0/0.png": (8, 8), "1/1.png": (9, 9)}), "folder: images differ in size"),
    ("folder-undecodable", _folder({"0/0.png": (8, 8), "1/1.png": b"not a png"}),
     "folder/1/1.png: cannot decode the image"),
    ("folder-same-names", _folder({"0/0.png": (8, 8), "1/0.png": (8, 8)}), "share a file name"),
    ("folder-loose-images", _folder({"0.png": (8, 8), "1/1.png": (8, 8)}), "lie outside class folders"),
    ("folder-empty", _folder({"0/notes.txt": b"nothing"}), "folder: no images in <class>/ folders"),
    ("folder-unnamed-class", lambda d: {**_folder({"0/0.png": (8, 8), "x/1.png": (8, 8)})(d),
                                        "--class-names": [str(c) for c in range(10)]},
     "folders ['x'] are not among the class names"),
    ("template-not-json", _template("{arch: mlp"), "template.json: not valid JSON"),
    ("template-list", _template("[1, 2]"), "template.json: must be a JSON object of victim settings"),
    ("template-training-list", _template(json.dumps({"training": [1, 2]})),
     "victim.json (from template.json and the flags): training: must be a JSON object (got [1, 2])"),
    ("template-bad-lr", lambda d: {**_template(json.dumps({"training": {"lr": "0.01"}}))(d), "--lr": None},
     f"victim.json (from template.json and the flags): {LR} (got '0.01')"),
]


@pytest.fixture
def victim_dir(tmp_path, trained, monkeypatch):
    """θ0 and θf imported into `v`, the user's files beside it; the working directory."""
    for name in ("train.npz", "after.pt"):
        shutil.copy(trained / name, tmp_path / name)
    import_victim(trained / "before.pt", trained / "after.pt", tmp_path / "v")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.bad_input
@pytest.mark.parametrize("setup,message", [c[1:] for c in BAD_DESCRIBE], ids=[c[0] for c in BAD_DESCRIBE])
def test_describe_victim_refuses(victim_dir, capsys, setup, message):
    flags = {**DESCRIBE, **setup(victim_dir)}
    args = [part for flag, values in flags.items() if values is not None for part in (flag, *values)]
    code = run_cli("describe-victim", "--victim-dir", "v", *args)
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert "Traceback" not in err and "error: unexpected" not in err
    assert not (victim_dir / "v/victim.json").exists() and not (victim_dir / "v/truth.npz").exists()


def _evil(d):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"net": Evil()}, d / "evil.pt")
    return "evil.pt", "after.pt"


def _other_shape(d):
    state = torch.load(d / "after.pt", weights_only=True)
    state["out.bias"] = torch.zeros(3)
    torch.save(state, d / "other.pt")
    return "before.pt", "other.pt"


def _tensor_list(d):
    torch.save([torch.zeros(2)], d / "list.pt")
    return "before.pt", "list.pt"


BAD_IMPORT = [
    ("pickled-code", _evil, "evil.pt: "),
    ("other-shapes", _other_shape, "differ in shape at 'out.bias': (10,) vs (3,)"),
    ("same-file", lambda d: ("before.pt", "before.pt"), "hold the same parameters"),
    ("missing-file", lambda d: ("before.pt", "nowhere.pt"), "nowhere.pt: "),
    ("no-state-dict", _tensor_list, "list.pt: "),
    ("safetensors-not-torch", lambda d: ("before.pt", "theta.safetensors"), "theta.safetensors: "),
]


@pytest.mark.bad_input
@pytest.mark.parametrize("setup,message", [c[1:] for c in BAD_IMPORT], ids=[c[0] for c in BAD_IMPORT])
def test_import_victim_refuses(tmp_path, trained, monkeypatch, capsys, setup, message):
    for name in ("before.pt", "after.pt"):
        shutil.copy(trained / name, tmp_path / name)
    save_weights(tmp_path / "theta.safetensors", {"w": torch.zeros(2)})
    monkeypatch.chdir(tmp_path)
    theta0, thetaf = setup(tmp_path)
    code = run_cli("import-victim", "--theta0", theta0, "--thetaf", thetaf, "--victim-dir", "v")
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert "Traceback" not in err and "error: unexpected" not in err
    assert not (tmp_path / "v").exists()


def test_imported_checkpoints_are_the_trained_ones(tmp_path, trained):
    import_victim(trained / "before.pt", trained / "after.pt", tmp_path / "v")
    after = torch.load(trained / "after.pt", weights_only=True)
    imported = load_weights(tmp_path / "v/thetaf.safetensors")
    assert imported.keys() == after.keys() and all(torch.equal(imported[k], after[k]) for k in after)
