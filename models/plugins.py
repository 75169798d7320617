"""Plugins: installed generators' config packages on Hydra's search path, the command line checked against them
before Hydra composes, and which package provides a model."""
from __future__ import annotations

import importlib.util
import re
from importlib.metadata import PackageNotFoundError, entry_points, packages_distributions, version
from pathlib import Path

CHOICE_GROUPS = ("model", "data", "trainer", "metrics", "experiment")  # config groups checked before Hydra composes
NAME_KEYS = ("tag", "model.label")  # command-line values that are names, whatever YAML would make of them
BUDGET_KEYS = ("trainer.reference_steps", "trainer.fraction", "trainer.flops")  # a sweep of these must increase
CONFIG_GROUP = "ehrbench.configs"  # entry points: <any name> = "<package>.conf" (a package holding model/*.yaml)
REPO = Path(__file__).resolve().parents[1]


def plugin_searchpath() -> list[str]:
    """`pkg://` entries for the config packages that installed plugins declare in the ehrbench.configs group."""
    return [f"pkg://{ep.value}" for ep in sorted(entry_points(group=CONFIG_GROUP), key=lambda e: e.name)]


def check_searchpath(entries: list[str]) -> None:
    """Each hydra.searchpath entry must exist: a `pkg://` module must be a regular package (with __init__.py,
    which Hydra needs), a `file://` entry a folder. One sentence otherwise."""
    for entry in entries:
        if entry.startswith("pkg://"):
            module = entry[len("pkg://"):].replace("/", ".")
            try:
                spec = importlib.util.find_spec(module)
            except ModuleNotFoundError:
                spec = None
            if spec is None:
                raise ValueError(f"hydra.searchpath entry {entry}: no importable package '{module}' (is the plugin "
                                 "installed, or its folder on PYTHONPATH?)")
            if not (spec.origin or "").endswith("__init__.py"):
                raise ValueError(f"hydra.searchpath entry {entry}: '{module}' is a folder without __init__.py; add an "
                                 f"empty {module.replace('.', '/')}/__init__.py (Hydra reads pkg:// configs from "
                                 "regular packages only)")
        elif entry.startswith("file://") and not Path(entry[len("file://"):]).is_dir():
            raise ValueError(f"hydra.searchpath entry {entry}: no such folder")


def _folders(entries: list[str]) -> list[Path]:
    out = [REPO / "benchmarks"]
    for entry in entries:
        if entry.startswith("pkg://"):
            spec = importlib.util.find_spec(entry[len("pkg://"):].replace("/", "."))
            out += [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
        elif entry.startswith("file://"):
            out.append(Path(entry[len("file://"):]))
    return out


def config_options(group: str, entries: list[str]) -> list[str]:
    """The config names of a group (e.g. model) in benchmarks/ and in every search-path entry."""
    return sorted({p.stem for folder in _folders(entries) for p in (folder / group).glob("*.yaml")})


def check_choice(group: str, name: str, entries: list[str]) -> None:
    """A `group=name` choice must exist somewhere on the search path; one sentence with the valid choices and the
    way a plugin's configs are found otherwise (Hydra's own message gives no such hint)."""
    valid = config_options(group, entries)
    if name not in valid:
        raise ValueError(f"no config {group}/{name}.yaml in benchmarks/ or the search path; valid choices: "
                         f"{', '.join(valid)} (a plugin's configs are found through its '{CONFIG_GROUP}' entry point "
                         "or hydra.searchpath=[pkg://<package>.conf])")


def provider(cls: type) -> dict:
    """Where a generator class comes from: its module, and the installed distribution and version providing it
    (ehrbench's own generators: ehrbench), recorded in run.json."""
    module = cls.__module__
    top = module.split(".")[0]
    dists = packages_distributions().get(top, [])
    dist = "ehrbench" if top == "ehrbench" else (dists[0] if dists else None)
    try:
        ver = version(dist) if dist else None
    except PackageNotFoundError:
        ver = None
    return {"module": module, "class": cls.__qualname__, "package": dist, "version": ver}


def check_increasing(key: str, value: str) -> None:
    """A budget sweep lists strictly increasing numbers (a compute curve's points, each budget once)."""
    try:
        nums = [float(v) for v in value.split(",")]
    except ValueError:
        return  # not a plain list (a sweep function, an interpolation): Hydra's own checks apply
    if any(b <= a for a, b in zip(nums, nums[1:])):
        order = ",".join(f"{v:g}" for v in sorted(set(nums)))
        raise ValueError(f"{key}={value} is not a strictly increasing budget list; list each budget once, smallest "
                         f"first, e.g. {key}={order}")


def prepare_argv(argv: list[str]) -> list[str]:
    """Before Hydra composes: the config packages of installed plugins (entry point group ehrbench.configs) join
    hydra.searchpath after the user's own entries, each entry is checked, and each `model=`, `data=`, `trainer=`,
    `metrics=` or `experiment=` choice must exist, so that these mistakes are one sentence with a hint instead of
    Hydra's warning or 'Could not find'; a budget sweep (`trainer.reference_steps=52,174,...`) must increase; a
    plain `tag=` or `model.label=` value is quoted, so it stays a name."""
    user, rest = [], []
    for arg in argv:
        if arg.startswith("hydra.searchpath="):
            user += [e.strip() for e in arg.split("=", 1)[1].strip().strip("[]").split(",") if e.strip()]
        else:
            rest.append(arg)
    entries = user + [e for e in plugin_searchpath() if e not in user]
    check_searchpath(entries)
    for i, arg in enumerate(rest):
        key, _, value = arg.lstrip("+").partition("=")
        if key in CHOICE_GROUPS and value and not any(c in value for c in "()[]{}$*"):  # not sweep functions
            for name in value.split(","):  # a sweep: a,b,c
                check_choice(key, name.strip(), entries)
        if key in BUDGET_KEYS and "," in value:
            check_increasing(key, value)
        if key in NAME_KEYS and re.fullmatch(r"[\w.+-]+", value):  # YAML would read inf, nan, true, 1e3 as non-names
            rest[i] = f"{arg[:len(arg) - len(value)]}'{value}'"
    return rest + ([f"hydra.searchpath=[{','.join(entries)}]"] if entries else [])
