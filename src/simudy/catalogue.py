"""The catalogue: one row per experiment of the paper, the paper's value beside ours per profile.

`params/catalogue.yaml` maps each of the paper's experiments to the pipeline's results (which
registry experiments, group or analysis, which methods or keys, in which metrics file); the paper's
numbers come from the registry (`evaluate.paper_ssim`, `evaluate.paper_values`) wherever it
holds the experiment, from the catalogue file only where it does not. This module reads the
metrics files that exist under `results/<experiment>/<profile>/`, never runs anything, and
writes `catalogue.md` (one row per experiment) and `catalogue.csv` (one line per experiment,
value and profile), each value with the commit that last changed its file.

A value in a metrics file is a number, or several attack seeds' numbers: a list of per-seed
values in its place (`{"simudy": {"ssim": [0.81, 0.84]}}`), or a `seeds` mapping at any level
above it (`{"simudy": {"ssim": 0.81, "seeds": {"0": {"ssim": 0.81}, "1": {"ssim": 0.84}}}}`, as
the report writes a run repeated over `reconstruct.seeds`: the seeds win over the level's own
value); the table shows the mean ± sd over the seeds, and compares the mean with the paper's.
"""

from __future__ import annotations

import csv
import io as stdio
import logging
import statistics
import subprocess
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from pydantic import Field, field_validator, model_validator

from simudy.config import Registry, Strict, read_model
from simudy.errors import SimudyError, dotted
from simudy.io import atomic_path, read_json

log = logging.getLogger(__name__)

DEFAULT_CATALOGUE = Path("params/catalogue.yaml")
NONE = "—"  # no value at that profile
SEP = " · "
MAX_ITEMS = 8  # numbers shown in one markdown line; the CSV has them all

REPRODUCED, DIFFERS, SCALED, PLUMBING = "reproduced", "differs", "scaled", "plumbing"
NOT_BUILT, NOT_RUN, BY_EYE = "not built", "built, not run", "run, compare by eye"
MEASURED = "measured"  # a benchmark at the paper's width, on the machine at hand



class Source(Strict):
    """Where one row's values are: registry experiments, a group or an analysis, and what to read."""

    name: str | None = None  # shown before the source's values, e.g. "MLP variant (fig2_mlp)"
    experiments: list[str] = []
    group: str | None = None  # a registry group: its experiments, and its methods unless given
    # A registry section's entry that is not an experiment, e.g. `linearity.tab1`: its results are
    # in results/<dir>/<profile>/ (dir: the entry's name unless given), its profiles its own.
    analysis: str | None = None
    dir: str | None = None
    # A benchmark suite (bench/<suite>.yaml): reads results/bench/<suite>/<file>, shown in the
    # column of `bench_profile` (the paper's width measured on the machine at hand).
    bench: str | None = None
    bench_profile: str = "cpu"
    paper_from: str | None = None  # an analysis: where in its entry the paper's value is, e.g. networks.{label}.paper
    file: str = "metrics.json"  # under results/<experiment>/<profile>/
    methods: list[str] = []  # values <method>.<metric> (<method> alone where metric is null)
    metric: str | None = "ssim"
    keys: dict[str, str] = {}  # label -> dotted path in the file
    plumbing_profiles: list[str] = []

    @field_validator("file")
    @classmethod
    def _relative_json(cls, value: str) -> str:
        path = PurePosixPath(value)
        if path.is_absolute() or ".." in path.parts or path.suffix != ".json":
            raise ValueError("a .json file under results/<experiment>/<profile>/, without '..'")
        return value

    @field_validator("keys")
    @classmethod
    def _paths(cls, value: dict[str, str]) -> dict[str, str]:
        for label, path in value.items():
            if not path or not all(path.split(".")):
                raise ValueError(f"{label}: {path!r} is not a dotted key path")
        return value

    @field_validator("analysis")
    @classmethod
    def _section_name(cls, value: str | None) -> str | None:
        if value is not None and (value.count(".") != 1 or not all(value.split("."))):
            raise ValueError(f"{value!r} is not <registry section>.<name>, e.g. linearity.tab1")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> Source:
        if sum((bool(self.experiments), self.group is not None, self.analysis is not None,
                self.bench is not None)) != 1:
            raise ValueError("give one of experiments, group, analysis or bench")
        if self.methods and self.keys:
            raise ValueError("give methods or keys, not both")
        if self.group is None and not (self.methods or self.keys):
            raise ValueError("give methods or keys")
        if self.analysis is None and (self.dir or self.paper_from):
            raise ValueError("dir and paper_from are for an analysis")
        return self

    def paths(self, methods: list[str]) -> dict[str, tuple[str, ...]]:
        """Label -> key path in the file."""
        if self.keys:
            return {label: tuple(path.split(".")) for label, path in self.keys.items()}
        return {m: (m, self.metric) if self.metric else (m,) for m in methods}


class Row(Strict):
    paper_ref: str
    measure: str
    # The paper's numbers by label, only where the registry holds none.
    paper: dict[str, float] = {}
    paper_text: str | None = None  # the paper's result where it is not a number
    tolerance: float | dict[str, float] | None = None  # default: the catalogue's
    sources: list[Source] = []

    @field_validator("tolerance")
    @classmethod
    def _non_negative(cls, value):
        values = value.values() if isinstance(value, dict) else [value] if value is not None else []
        if any(v < 0 or v != v for v in values):
            raise ValueError("a tolerance is a number >= 0")
        return value

    def tolerance_of(self, label: str, default: float) -> float:
        if isinstance(self.tolerance, dict):
            return self.tolerance.get(label, default)
        return default if self.tolerance is None else self.tolerance


class Catalogue(Strict):
    tolerance: float = Field(gt=0, allow_inf_nan=False)
    profiles: list[str] = Field(min_length=1)
    paper_profile: str
    rows: dict[str, Row] = Field(min_length=1)

    @model_validator(mode="after")
    def _profiles(self) -> Catalogue:
        if self.paper_profile not in self.profiles:
            raise ValueError(f"paper_profile {self.paper_profile!r} is not one of profiles {self.profiles}")
        for rid, row in self.rows.items():
            for i, src in enumerate(row.sources):
                unknown = sorted(set(src.plumbing_profiles) - set(self.profiles))
                if unknown:
                    raise ValueError(f"rows.{rid}.sources.{i}.plumbing_profiles: {unknown} not in profiles")
        return self


def load_catalogue(path: str | Path = DEFAULT_CATALOGUE) -> Catalogue:
    return read_model(path, Catalogue)


# -- what each row reads ------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One value a source reads from one experiment's file."""

    experiment: str
    label: str
    path: tuple[str, ...]
    paper: float | None  # the paper's number for it
    paper_key: str | None  # where that number is written


@dataclass
class Plan:
    """A source resolved against the registry."""

    source: Source
    where: str  # its key in the catalogue file, for messages
    experiments: list[str]  # those the registry holds
    labels: list[str]
    items: list[Item]
    profiles: dict[str, list[str]]  # catalogue profile -> experiments that have it

    @property
    def built(self) -> bool:
        return bool(self.experiments)


def plan(cat: Catalogue, reg: Registry, path: str | Path = DEFAULT_CATALOGUE) -> dict[str, list[Plan]]:
    """Every row's sources resolved against the registry; a mistake is an error naming the key."""
    out = {}
    for rid, row in cat.rows.items():
        plans = [_plan_source(cat, reg, row, src, f"rows.{rid}.sources.{i}", path)
                 for i, src in enumerate(row.sources)]
        labels = {label for p in plans for label in p.labels}
        for label, number in row.paper.items():
            same = [key for key, value in _registry_values(reg, cat, row, plans, label) if value == number]
            if same:
                raise SimudyError(f"{path}: rows.{rid}.paper.{label}: the registry holds this paper value "
                                  f"({same[0]}); remove it here (one source of truth)")
        if isinstance(row.tolerance, dict):
            unknown = sorted(set(row.tolerance) - labels)
            if unknown:
                raise SimudyError(f"{path}: rows.{rid}.tolerance: no value has the label {unknown[0]!r} "
                                  f"(labels: {sorted(labels)})")
        out[rid] = plans
    return out


def _plan_source(cat: Catalogue, reg: Registry, row: Row, src: Source, where: str, path) -> Plan:
    if src.analysis is not None:
        return _plan_analysis(cat, reg, row, src, where, path)
    if src.bench is not None:
        return _plan_bench(cat, row, src, where, path)
    if src.group is not None:
        group = reg.groups.get(src.group)
        names = group.experiments if group else []
        methods = src.methods or (group.methods if group else [])
    else:
        names, methods = src.experiments, src.methods
    paths = src.paths(methods)
    known = [e for e in names if e in reg.experiments]
    items, profiles = [], {}
    for e in known:
        entry = reg.experiments[e]
        for p in (p for p in cat.profiles if p in entry.profiles):
            profiles.setdefault(p, []).append(e)
        configs = [reg.resolve(e, p) for p in entry.profiles]
        runs = {run for c in configs for run in c.reconstruct.runs()}
        ev = next((c for c in configs if c.profile == cat.paper_profile), configs[0]).evaluate
        for label, parts in paths.items():
            run = _run_of(src.file, parts)
            if run is not None and run not in runs:
                what = "methods" if src.methods else f"keys.{label}"
                raise SimudyError(f"{path}: {where}.{what}: experiment {e!r} runs no {run!r} "
                                  f"(its runs: {sorted(runs)})")
            items.append(_item(e, label, parts, *_paper_value(e, ev, parts), row))
    return Plan(src, where, known, list(paths), items, profiles)


def _plan_analysis(cat: Catalogue, reg: Registry, row: Row, src: Source, where: str, path) -> Plan:
    section, name = src.analysis.split(".")
    entry = (getattr(reg, section, None) or {}).get(name) if section in type(reg).model_fields else None
    paths = src.paths(src.methods)
    if entry is None:
        return Plan(src, where, [], list(paths), [], {})
    folder = src.dir or name
    profiles = {p: [folder] for p in cat.profiles if p in getattr(entry, "profiles", {})}
    items = []
    for label, parts in paths.items():
        paper, key = None, None
        if src.paper_from:
            key = f"{src.analysis}.{src.paper_from.format(label=label)}"
            paper = _walk(entry, key.split(".")[2:])
            if paper is _MISSING or not (paper is None or _is_number(paper)):
                raise SimudyError(f"{path}: {where}.paper_from: the registry has no number at {key}")
        items.append(_item(folder, label, parts, paper, key if paper is not None else None, row))
    return Plan(src, where, [folder], list(paths), items, profiles)


def _plan_bench(cat: Catalogue, row: Row, src: Source, where: str, path) -> Plan:
    if src.bench_profile not in cat.profiles:
        raise SimudyError(f"{path}: {where}.bench_profile: {src.bench_profile!r} is not one of {cat.profiles}")
    folder = f"bench/{src.bench}"
    paths = src.paths(src.methods)
    items = [_item(folder, label, parts, None, None, row) for label, parts in paths.items()]
    return Plan(src, where, [folder], list(paths), items, {src.bench_profile: [folder]})


def _walk(node, parts: list[str]):
    """The value at a key path through registry models and mappings; _MISSING where there is none."""
    for part in parts:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif not isinstance(node, dict) and part in getattr(type(node), "model_fields", {}):
            node = getattr(node, part)
        else:
            return _MISSING
    return node


_MISSING = object()


def _item(experiment: str, label: str, parts: tuple[str, ...], paper: float | None, key: str | None,
          row: Row) -> Item:
    """A value to read, with the paper's number: the row's own where it gives one for this label
    (a figure that reports another number for the same run), else the registry's."""
    if label in row.paper:
        return Item(experiment, label, parts, row.paper[label], None)
    return Item(experiment, label, parts, paper, key)


def _registry_values(reg: Registry, cat: Catalogue, row: Row, plans: list[Plan], label: str):
    """(key, number) of the registry's paper values for a label, as if the row gave none."""
    bare = row.model_copy(update={"paper": {}})
    for p in plans:
        for it in _plan_source(cat, reg, bare, p.source, p.where, "").items:
            if it.label == label and it.paper_key is not None:
                yield it.paper_key, it.paper


def _run_of(file: str, parts: tuple[str, ...]) -> str | None:
    """The run (method or sweep point) a key path names, where the file's layout says."""
    if PurePosixPath(file).name == "metrics.json":
        return parts[0]
    if PurePosixPath(file).name == "sweep.json" and parts[0] == "points" and len(parts) > 1:
        return parts[1]
    return None


def _paper_value(experiment: str, ev, parts: tuple[str, ...]) -> tuple[float | None, str | None]:
    """The registry's paper number for a value: `paper_ssim` by run for an SSIM, else
    `paper_values` by the metric's name."""
    metric, run = parts[-1], (parts[-2] if len(parts) > 1 else None)
    base = f"experiments.{experiment}.evaluate"
    if metric == "ssim" and run in ev.paper_ssim:
        return ev.paper_ssim[run], f"{base}.paper_ssim.{run}"
    if metric in ev.paper_values:
        return ev.paper_values[metric], f"{base}.paper_values.{metric}"
    return None, None


def input_files(catalogue: str | Path, reg: Registry, results: str | Path) -> list[str]:
    """The metrics files the catalogue reads that exist now (the Snakemake rule's inputs)."""
    cat = load_catalogue(catalogue)
    files = {str(_file(results, p.source, e, prof)) for plans in plan(cat, reg, catalogue).values()
             for p in plans for prof, exps in p.profiles.items() for e in exps}
    return sorted(f for f in files if Path(f).is_file())


def _file(results: str | Path, src: Source, folder: str, profile: str) -> Path:
    if src.bench is not None:
        return Path(results) / folder / src.file
    return Path(results) / folder / profile / src.file


# -- reading values -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Value:
    seeds: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.seeds)

    @property
    def sd(self) -> float | None:
        return statistics.stdev(self.seeds) if len(self.seeds) > 1 else None

    def text(self) -> str:
        if self.sd is None:
            return _num(self.mean)
        return f"{_num(self.mean)} ± {_num(self.sd)} ({len(self.seeds)} seeds)"


def lookup(node, parts: tuple[str, ...], file: Path) -> Value | None:
    """The value at a dotted key path; None where the file does not have it. Where a level holds
    a `seeds` mapping that has the rest of the path for every seed, the seeds' values win over
    the level's own (which are one seed's)."""
    for i, part in enumerate(parts):
        over_seeds = _over_seeds(node, parts[i:], file)
        if over_seeds is not None:
            return over_seeds
        if not (isinstance(node, dict) and part in node):
            return None
        node = node[part]
    if _is_number(node):
        return Value((float(node),))
    if isinstance(node, list) and node and all(_is_number(v) for v in node):
        return Value(tuple(float(v) for v in node))
    raise SimudyError(f"{file}: {dotted(parts)}: expected a number or a list of per-seed numbers, "
                      f"got {type(node).__name__}")


def _over_seeds(node, parts: tuple[str, ...], file: Path) -> Value | None:
    if not (isinstance(node, dict) and isinstance(node.get("seeds"), dict) and node["seeds"]):
        return None
    found = [lookup(seed, parts, file) for seed in node["seeds"].values()]
    if any(v is None for v in found):
        return None
    return Value(tuple(s for v in found for s in v.seeds))


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Commits:
    """The short hash of the last commit that changed a file; `uncommitted` where git does not
    track it or it differs from HEAD."""

    UNCOMMITTED = "uncommitted"

    def __init__(self) -> None:
        self._seen: dict[Path, str] = {}

    def __call__(self, path: Path) -> str:
        path = path.resolve()
        if path not in self._seen:
            self._seen[path] = self._commit(path)
        return self._seen[path]

    def _commit(self, path: Path) -> str:
        tracked = self._git(path, "ls-files", "--error-unmatch", "--")
        changed = self._git(path, "diff", "--quiet", "HEAD", "--")
        if tracked is None or changed is None:
            return self.UNCOMMITTED
        last = (self._git(path, "log", "-1", "--format=%h", "--") or "").strip()
        return last or self.UNCOMMITTED

    @staticmethod
    def _git(path: Path, *args: str) -> str | None:
        """git's output, run in the file's folder with the file last; None where it fails."""
        try:
            proc = subprocess.run(["git", "-C", str(path.parent), *args, path.name],
                                  capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return None
        return proc.stdout if proc.returncode == 0 else None


@dataclass
class Reading:
    """What one source read at one profile."""

    values: dict[tuple[str, str], Value] = field(default_factory=dict)  # (experiment, label) -> value
    commits: dict[str, str] = field(default_factory=dict)  # experiment -> commit of its file

    @property
    def ran(self) -> bool:
        return bool(self.commits)


def read(p: Plan, profile: str, results: str | Path, commits: Commits) -> Reading:
    out = Reading()
    for e in p.profiles.get(profile, []):
        file = _file(results, p.source, e, profile)
        if not file.is_file():
            continue
        data = read_json(file)
        out.commits[e] = commits(file)
        for it in (it for it in p.items if it.experiment == e):
            value = lookup(data, it.path, file)
            if value is None:
                log.warning("%s: no %s (catalogue %s, label %s)", file, dotted(it.path), p.where, it.label)
            else:
                out.values[(e, it.label)] = value
    return out


# -- statuses -----------------------------------------------------------------------------------


def within(value: Value, paper: float, tolerance: float) -> bool:
    return abs(value.mean - paper) <= tolerance  # NaN is never within


def item_status(p: Plan, row: Row, cat: Catalogue, profile: str, item: Item, value: Value | None) -> str:
    if value is None:
        return NOT_RUN
    if profile == cat.paper_profile:
        if item.paper is None:
            return BY_EYE
        return REPRODUCED if within(value, item.paper, row.tolerance_of(item.label, cat.tolerance)) else DIFFERS
    return _reduced(p, profile)


def _reduced(p: Plan, profile: str) -> str:
    """The status of a value below the paper profile."""
    if p.source.bench is not None:
        return MEASURED
    return PLUMBING if profile in p.source.plumbing_profiles else SCALED


def source_status(p: Plan, row: Row, cat: Catalogue, readings: dict[str, Reading]) -> str:
    if not p.built:
        return NOT_BUILT
    parts = []
    for profile in cat.profiles:
        reading = readings.get(profile)
        if reading is None or not reading.ran:
            continue
        if profile != cat.paper_profile:
            parts.append(f"{_reduced(p, profile)} ({profile})")
            continue
        compared = [within(v, it.paper, row.tolerance_of(it.label, cat.tolerance))
                    for it in p.items if it.paper is not None
                    for v in [reading.values.get((it.experiment, it.label))] if v is not None]
        if not compared:
            parts.append(f"{BY_EYE} ({profile})")
        elif all(compared):
            parts.append(f"{REPRODUCED} ({profile})")
        else:
            parts.append(f"{DIFFERS} ({profile}: {sum(compared)} of {len(compared)} within tolerance)")
    return SEP.join(parts) or NOT_RUN


# -- the table ----------------------------------------------------------------------------------


@dataclass
class CatalogueRow:
    id: str
    paper_ref: str
    measure: str
    paper: str
    ours: dict[str, str]  # profile -> cell
    commit: str
    status: str


def build(cat: Catalogue, reg: Registry, results: str | Path, catalogue_path: str | Path = DEFAULT_CATALOGUE,
          commits: Commits | None = None) -> tuple[list[CatalogueRow], list[dict[str, str]]]:
    """The markdown rows (one per experiment of the paper) and the CSV records."""
    commits = commits or Commits()
    plans = plan(cat, reg, catalogue_path)
    rows, records = [], []
    for rid, row in cat.rows.items():
        readings = [{prof: read(p, prof, results, commits) for prof in p.profiles} for p in plans[rid]]
        pairs = list(zip(plans[rid], readings))
        ours = {prof: _lines([(p, _value_cell(p, prof, r.get(prof))) for p, r in pairs]) for prof in cat.profiles}
        commit = _lines([(p, _commit_cell(cat, r)) for p, r in pairs])
        built = any(p.built for p in plans[rid])
        status = _lines([(p, source_status(p, row, cat, r)) for p, r in pairs]) if built else NOT_BUILT
        rows.append(CatalogueRow(rid, row.paper_ref, row.measure, _paper_cell(row, plans[rid]), ours, commit, status))
        records.extend(_records(cat, rid, row, plans[rid], readings))
    return rows, records


def _lines(cells: list[tuple[Plan, str]]) -> str:
    """One line per source, its name first where it has one; `—` where no source has a value."""
    if all(not text for _, text in cells):
        return NONE
    return "<br>".join(f"{p.source.name}: {text or NONE}" if p.source.name else (text or NONE) for p, text in cells)


def _value_cell(p: Plan, profile: str, reading: Reading | None) -> str:
    if reading is None or not reading.ran:
        return ""
    parts = []
    for label in p.labels:
        values = [reading.values[(e, label)] for e in p.experiments if (e, label) in reading.values]
        if len(values) == 1:
            parts.append(f"{label} {values[0].text()}")
        elif values:
            parts.append(f"{label} {_range([v.mean for v in values])}")
    text = _compact(parts) or "no values (see the log)"
    run, total = len(reading.commits), len(p.profiles.get(profile, []))
    return text + (f" ({run} of {total} run)" if run < total else "")


def _commit_cell(cat: Catalogue, readings: dict[str, Reading]) -> str:
    parts = []
    for prof in cat.profiles:
        r = readings.get(prof)
        if r is not None and r.ran:
            parts.append(f"{prof} {', '.join(dict.fromkeys(r.commits.values()))}")
    return SEP.join(parts)


def _paper_cell(row: Row, plans: list[Plan]) -> str:
    lines, seen, used = [], set(), set()
    for p in plans:
        parts = []
        for label in p.labels:
            numbers = [it.paper for it in p.items if it.label == label and it.paper is not None]
            used.update(it.label for it in p.items if it.label == label and it.paper is not None)
            if numbers:
                parts.append(f"{label} {_range(numbers, paper=True)}")
        text = _compact(parts)
        if text and text not in seen:
            seen.add(text)
            lines.append(f"{p.source.name}: {text}" if p.source.name and len(plans) > 1 else text)
    rest = [f"{label} {_paper_num(v)}" for label, v in row.paper.items() if label not in used]
    if rest:
        lines.append(_compact(rest))
    if row.paper_text:
        lines.append(row.paper_text)
    return "<br>".join(lines) or NONE


def _compact(parts: list[str]) -> str:
    if len(parts) > MAX_ITEMS:
        return SEP.join([*parts[:3], "…", *parts[-2:]]) + f" ({len(parts)} values; all in catalogue.csv)"
    return SEP.join(parts)


def _range(numbers: list[float], paper: bool = False) -> str:
    fmt = _paper_num if paper else _num
    lo, hi = min(numbers), max(numbers)
    return fmt(lo) if lo == hi else f"{fmt(lo)}–{fmt(hi)}"


def _num(value: float) -> str:
    return f"{value:.3f}" if abs(value) < 100 or value != value else f"{value:.0f}"


def _paper_num(value: float) -> str:
    return f"{value:.4f}".rstrip("0").rstrip(".") if abs(value) < 1 else f"{value:g}"


# -- the CSV ------------------------------------------------------------------------------------

CSV_FIELDS = ["id", "paper_ref", "measure", "source", "experiment", "file", "label", "key", "profile", "value",
              "sd", "n_seeds", "paper", "tolerance", "commit", "status"]


def _records(cat: Catalogue, rid: str, row: Row, plans: list[Plan],
             readings: list[dict[str, Reading]]) -> list[dict[str, str]]:
    base = {"id": rid, "paper_ref": row.paper_ref, "measure": row.measure}
    out, used = [], set()
    for p, by_profile in zip(plans, readings):
        src = {"source": p.source.name or "", "file": p.source.file}
        if not p.built:
            named = p.source.experiments or [p.source.group]
            out.append({**base, **src, "experiment": " ".join(named), "status": NOT_BUILT})
            continue
        for it in p.items:
            if it.paper is not None:
                used.add(it.label)
            for prof in cat.profiles:
                if it.experiment not in p.profiles.get(prof, []):
                    continue
                reading = by_profile[prof]
                value = reading.values.get((it.experiment, it.label))
                status = item_status(p, row, cat, prof, it, value)
                if value is None and it.experiment in reading.commits:
                    status = "missing in file"
                out.append({
                    **base, **src, "experiment": it.experiment, "label": it.label, "key": ".".join(it.path),
                    "profile": prof, "value": "" if value is None else repr(value.mean),
                    "sd": "" if value is None or value.sd is None else repr(value.sd),
                    "n_seeds": "" if value is None else str(len(value.seeds)),
                    "paper": "" if it.paper is None else repr(it.paper),
                    "tolerance": repr(row.tolerance_of(it.label, cat.tolerance)) if it.paper is not None else "",
                    "commit": reading.commits.get(it.experiment, ""), "status": status,
                })
    for label, v in row.paper.items():
        if label not in used:
            out.append({**base, "label": label, "paper": repr(v), "status": NOT_BUILT})
    if not out:
        out.append({**base, "status": NOT_BUILT})
    return out


# -- writing ------------------------------------------------------------------------------------

HEADER = """\
# The paper's experiments and our values

Generated by `snakemake catalogue` (`simudy catalogue`) from `params/catalogue.yaml`, the paper's
values in `params/experiments.yaml` and the committed metrics files under `results/`: do not edit.
One row per experiment of the paper. Values are mean SSIM (paper protocol) unless the label names
another measure; `a–b` is the range over a group's experiments; `m ± sd (n seeds)` where a run has
several attack seeds. `commit`: the last commit that changed each metrics file, per profile.
Status: **reproduced** / **differs** — a `{paper}`-profile value within / outside {tolerance} of the
paper's (or the row's own tolerance); **scaled** — a reduced run that reconstructs; **plumbing** — the
run works but means nothing at that scale; **measured** — a benchmark at the paper's width on the
machine at hand; **built, not run** — a target without committed metrics;
**not built** — no target yet. A `cpu` number is never a reproduction of the paper's. Every value,
with its metrics key: [`catalogue.csv`](catalogue.csv).

"""


def markdown(cat: Catalogue, rows: list[CatalogueRow]) -> str:
    head = ["id", "paper ref", "what is measured", "paper", *(f"ours, {p}" for p in cat.profiles), "commit", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.id, r.paper_ref, r.measure, r.paper, *(r.ours[p] for p in cat.profiles), r.commit, r.status]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return HEADER.format(paper=cat.paper_profile, tolerance=cat.tolerance) + "\n".join(lines) + "\n"


def to_csv(records: list[dict[str, str]]) -> str:
    buf = stdio.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return buf.getvalue()


def write_catalogue(reg: Registry, catalogue: str | Path, results: str | Path,
                    out_dir: str | Path) -> list[CatalogueRow]:
    """Write catalogue.md and catalogue.csv to `out_dir`."""
    cat = load_catalogue(catalogue)
    rows, records = build(cat, reg, results, catalogue)
    out_dir = Path(out_dir)
    for name, text in (("catalogue.md", markdown(cat, rows)), ("catalogue.csv", to_csv(records))):
        with atomic_path(out_dir / name) as tmp:
            tmp.write_text(text)
    return rows
