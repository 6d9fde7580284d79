"""A study file: a grid of settings and/or named variants of one training config, each trained
and evaluated as its own run (STUDY_DIR/VARIANT/).

    name = "thesis"                      # the study's directory and job-folder name
    description = "..."                  # optional, shown in the leaderboard
    best_by_loss = true                  # also evaluate each variant's best_by_loss/ model

    [grid]                               # every combination of these values
    "optim.lr" = [2.5e-4, 1e-3]
    "model.stacks" = [2, 4]

    [variants.baseline]                  # named variants: section.key = value overrides
    [variants.no-skips]
    model.skips = false

With both a grid and variants, every variant is crossed with every grid point. This module
reads and checks study files and expands them into variants (`load_study`).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ConfigError, flatten, from_table, load_config, read_toml, toml_value

RESERVED = ("run_dir", "data.shards")
"""Keys the study sets for every variant itself."""
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass
class Variant:
    name: str
    overrides: list[str]
    """`section.key=value` overrides of the study's training config (TOML values)."""


@dataclass
class Study:
    name: str
    variants: list[Variant]
    description: str = ""
    best_by_loss: bool = False
    source: str = ""


def _short(key: str, keys: list[str]) -> str:
    last = key.rsplit(".", 1)[-1]
    return last if sum(k.rsplit(".", 1)[-1] == last for k in keys) == 1 else key


def _value_name(value) -> str:
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "x"


@dataclass
class StudyFile:
    """What a study file holds (checked by the config loader: an unknown key is named with the
    valid ones, a wrong type with the expected one)."""
    name: str = ""
    """The study's directory and job-folder name (default: the file's stem)."""
    description: str = ""
    best_by_loss: bool = False
    """Also evaluate each variant's best_by_loss/ model."""
    grid: dict = field(default_factory=dict)
    """key = [values]: every combination."""
    variants: dict = field(default_factory=dict)
    """[variants.NAME] tables of section.key = value overrides."""

    def __post_init__(self) -> None:
        if self.name and not _NAME.match(self.name):
            raise ConfigError(f"name {self.name!r} must be letters, digits, '.', '_', '+', '-'")
        for table in ("grid", "variants"):
            if not isinstance(getattr(self, table), dict):
                raise ConfigError(f"{table} must be a table ([{table}])")


def load_study(path: str | Path) -> Study:
    """Read and expand a study file; errors name the file and the offending key."""
    path = Path(path)
    raw = read_toml(path, "study file")
    try:
        spec = from_table(StudyFile, raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    name = spec.name or path.stem
    if not _NAME.match(name):
        raise ConfigError(f"{path}: name {name!r} must be letters, digits, '.', '_', '+', '-'")
    if "grid" not in raw and "variants" not in raw:
        raise ConfigError(f"{path}: no [grid] and no [variants.NAME]: nothing to train")

    named = [(None, [])] if "variants" not in raw else []
    for vname, table in raw.get("variants", {}).items():
        if not _NAME.match(vname):
            raise ConfigError(f"{path}: variant name {vname!r} must be letters, digits, '.', "
                              "'_', '+', '-'")
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: variants.{vname} must be a table of section.key = value")
        named.append((vname, [f"{k}={toml_value(v)}" for k, v in flatten(table).items()]))
    if "variants" in raw and not named:
        raise ConfigError(f"{path}: [variants] holds no variant")

    grid = flatten(raw.get("grid", {}))
    if "grid" in raw and not grid:
        raise ConfigError(f"{path}: [grid] is empty; give key = [value, ...]")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: grid key {key} has no values; give {key} = [v1, v2, ...]")
    keys = list(grid)
    points = [list(zip(keys, combo)) for combo in itertools.product(*grid.values())] or [[]]

    variants = []
    for (vname, overrides), point in itertools.product(named, points):
        parts = ([vname] if vname else []) + [f"{_short(k, keys)}-{_value_name(v)}"
                                               for k, v in point]
        variants.append(Variant("_".join(parts) or "base",
                                overrides + [f"{k}={toml_value(v)}" for k, v in point]))
    seen = set()
    for v in variants:
        if v.name in seen:
            raise ConfigError(f"{path}: two variants are named {v.name}; rename one")
        seen.add(v.name)
        for item in v.overrides:
            if item.split("=", 1)[0] in RESERVED:
                raise ConfigError(f"{path}: variant {v.name} sets {item.split('=', 1)[0]}, "
                                  "which the study sets itself (--shards, the study directory)")
    return Study(name=name, variants=variants, description=spec.description,
                 best_by_loss=spec.best_by_loss, source=str(path))


def variant_overrides(study_dir: str | Path, shards: str, variant: Variant,
                      common: list[str] = ()) -> list[str]:
    """The full override list of a variant's training run: shards and run directory, the
    submission's own overrides, then the variant's (the variant wins)."""
    return [f"data.shards={shards}", f"run_dir={Path(study_dir) / variant.name}", *common,
            *variant.overrides]


def check_variants(study: Study, config: str, overrides_of) -> None:
    """Load every variant's config as its training job will, so an unknown key or a bad value
    stops the submission with the variant named instead of failing one job later."""
    for v in study.variants:
        try:
            load_config(config, overrides_of(v))
        except ConfigError as exc:
            raise ConfigError(f"{study.source}: variant {v.name}: {exc}") from None
