import pytest
import yaml

from simudy.config import SECTIONS, load_experiment, load_registry, read_yaml
from simudy.errors import SimudyError
from tests.conftest import ROOT

REGISTRY = ROOT / "params/experiments.yaml"


def test_every_experiment_resolves_at_every_profile():
    reg = load_registry(REGISTRY)
    for name, entry in reg.experiments.items():
        # A `_mlp` variant checks a ResNet figure's claim at CPU scale; the paper's setting is the figure's own.
        assert ({"smoke", "cpu"} if name.endswith("_mlp") else {"smoke", "cpu", "paper"}) <= entry.profiles.keys()
        for profile in entry.profiles:
            cfg = reg.resolve(name, profile)
            assert all(cfg.reconstruct.method(m).steps >= 1 for m in cfg.reconstruct.runs())


def test_paper_profile_keeps_the_authors_defaults():
    cfg = load_experiment("fig1", "paper", REGISTRY)
    assert (cfg.init.arch, cfg.init.width) == ("resnet18", 64)
    assert (cfg.victim.epochs, cfg.victim.batch_size, cfg.victim.lr, cfg.victim.per_class) == (20, 20, 0.01, 2)
    r = cfg.reconstruct.attacks["simudy"]
    assert (r.steps, r.sim_epochs, r.lr, r.betas, r.cosine_period) == (30000, 8, 0.01, [0.8, 0.9], 100)
    assert (r.clip_max_norm, r.clip_to_norm, r.clip_fraction, r.init_scale) == (20.0, 5.0, 0.25, 0.5)
    assert cfg.evaluate.paper_ssim["simudy"] == 0.3140


def test_profile_overrides_only_what_it_names():
    paper, cpu = (load_experiment("fig4", p, REGISTRY) for p in ("paper", "cpu"))
    assert paper.victim.per_class == 10 and cpu.victim.per_class == 2
    assert cpu.init.hidden == [1000, 1000] and cpu.victim.lr == paper.victim.lr


def _edited(tmp_path, edit):
    raw = read_yaml(REGISTRY)
    edit(raw)
    path = tmp_path / "experiments.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda r: r["experiments"]["demo"]["profiles"]["cpu"]["reconstruct"]["attacks"]["simudy"].update(steps="many"),
     r"experiment 'demo' at profile 'cpu': reconstruct.attacks.simudy.steps: Input should be a valid integer"),
    (lambda r: r["experiments"]["demo"]["reconstruct"].update(attacks={"simudy": {"tv_weight": "1e-3"}}),
     r"reconstruct.attacks.simudy.tv_weight: Input should be a valid number"),
    (lambda r: r["experiments"]["demo"]["reconstruct"].update(attacks={"simudy": {"tv_wieght": 0.1}}),
     r"reconstruct.attacks.simudy.tv_wieght: Extra inputs are not permitted"),
    (lambda r: r["experiments"]["demo"]["reconstruct"].update(methods=["simudy", "lo"]),
     r"methods \['lo'\] are not configured under attacks"),
    (lambda r: r["experiments"]["demo"]["init"].update(outputs=1),
     r"a logistic-loss victim needs init.outputs 1, and a one-output model a logistic loss"),
])
def test_wrong_values_name_the_file_and_key(tmp_path, edit, message):
    path = _edited(tmp_path, edit)
    with pytest.raises(SimudyError, match=message) as err:
        load_experiment("demo", "cpu", path)
    assert str(path) in str(err.value)


def test_missing_sections_and_unknown_names(tmp_path):
    path = _edited(tmp_path, lambda r: r["experiments"]["demo"]["profiles"]["cpu"].pop("victim"))
    with pytest.raises(SimudyError, match=r"experiments.demo.profiles.cpu.victim: Field required"):
        load_registry(path)
    path = _edited(tmp_path, lambda r: r["experiments"]["demo"].update(dataset="mnist"))
    with pytest.raises(SimudyError, match="unknown dataset 'mnist'"):
        load_registry(path)
    with pytest.raises(SimudyError, match="unknown experiment 'fig99'"):
        load_experiment("fig99", "cpu", REGISTRY)
    assert SECTIONS == ("init", "victim", "reconstruct", "evaluate")


def test_a_profile_can_attack_another_profiles_victim(tmp_path):
    fast, paper = (load_experiment("fig1", p, REGISTRY) for p in ("paper_fast", "paper"))
    assert (fast.victim_profile, paper.victim_profile) == ("paper", "paper")
    assert fast.init == paper.init and fast.victim == paper.victim
    assert fast.reconstruct.attacks["simudy"].lr == 10 * paper.reconstruct.attacks["simudy"].lr
    def fast(r):
        return r["experiments"]["fig1"]["profiles"]["paper_fast"]

    own_init = _edited(tmp_path, lambda r: fast(r)["init"].update(width=8))
    with pytest.raises(SimudyError, match="with victim_of, leave init and victim empty"):
        load_registry(own_init)
    chained = _edited(tmp_path, lambda r: fast(r).update(victim_of="smoke_fast"))
    with pytest.raises(SimudyError, match="name a profile that trains its own victim"):
        load_registry(chained)


def test_an_experiment_can_attack_another_experiments_victim(tmp_path):
    reg = load_registry(REGISTRY)
    for profile in ("cpu", "paper", "smoke"):
        tv, fig1 = reg.resolve("tv", profile), reg.resolve("fig1", profile)
        assert (tv.victim_experiment, tv.victim_profile) == ("fig1", profile)
        assert (tv.init, tv.victim) == (fig1.init, fig1.victim)
    assert reg.resolve("fig1", "paper_fast").victim_experiment == "fig1"
    tv = lambda r: r["experiments"]["tv"]  # noqa: E731
    for edit, message in [
        (lambda r: tv(r).update(victim_of="figB"), "'figB' is not an experiment that trains its own victim"),
        (lambda r: tv(r).update(victim_of="demo"), "differs from that of its victim_of 'demo'"),
        (lambda r: tv(r)["profiles"]["cpu"]["victim"].update(epochs=3), "leave init and victim empty"),
        (lambda r: tv(r)["profiles"].update(fast=tv(r)["profiles"]["cpu"]), r"has no profile \['fast'\]"),
    ]:
        with pytest.raises(SimudyError, match=message):
            load_registry(_edited(tmp_path, edit))


def test_a_sweep_takes_named_choices_and_names_its_runs_after_them(tmp_path):
    cfg = load_experiment("figB", "cpu", REGISTRY)
    assert [cfg.reconstruct.method(m).loss for m in cfg.reconstruct.runs()] == ["cosine", "euclidean"]
    assert cfg.reconstruct.runs() == ["simudy_losscosine", "simudy_losseuclidean"]
    sweep = lambda r: r["experiments"]["figB"]["reconstruct"]["sweep"]  # noqa: E731
    bad = _edited(tmp_path, lambda r: sweep(r)["grid"].update(loss=["cosine", "manhattan"]))
    with pytest.raises(SimudyError, match="sweep point 'simudy_lossmanhattan'"):
        load_registry(bad)
