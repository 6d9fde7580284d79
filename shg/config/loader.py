"""TOML files into typed dataclasses, with `section.key=value` overrides: the one loader of the
project's TOML files (training configs, Slurm profiles, study files).

`load(path, cls, overrides)` reads a file, applies the overrides and builds `cls` (nested
dataclasses are sections): an unknown key is an error that lists the valid ones, a value of the
wrong type names the expected one, and each dataclass's `__post_init__` checks its values.
`load_config` is that for a training run's RunConfig; `dump_toml` writes the resolved
configuration (RUN/config.toml).
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from pathlib import Path

from ..errors import ConfigError
from .schema import RunConfig


def read_toml(path: str | Path, what: str = "config file") -> dict:
    """A TOML file's table; a missing or invalid file is a one-line error naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML ({exc})") from None


def _coerce(name: str, value, kind):
    origin = typing.get_origin(kind)
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise ConfigError(f"{name} is a section; give it as [{name}] or {name}.key=value")
        return from_table(kind, value, name + ".")
    if origin is list:
        (item,) = typing.get_args(kind)
        if not isinstance(value, list):
            raise ConfigError(f"{name} must be a list, not {value!r}")
        return [_coerce(f"{name}[]", v, item) for v in value]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind in (int, float, str, bool) and (type(value) is not kind):
        raise ConfigError(f"{name} must be {kind.__name__}, not {value!r}")
    return value


def from_table(cls, values: dict, prefix: str = ""):
    """The dataclass `cls` from a TOML table (its sections become the nested dataclasses);
    errors name the key with `prefix` ("model.")."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"unknown key {prefix}{unknown[0]}; valid keys"
                          f"{' in [' + prefix[:-1] + ']' if prefix else ''}: "
                          + ", ".join(names))
    kwargs = {k: _coerce(prefix + k, v, hints[k]) for k, v in values.items()}
    return cls(**kwargs)


def flatten(table: dict, prefix: str = "") -> dict:
    """{'model': {'skips': False}} -> {'model.skips': False}: the dotted keys of a nested table
    (a config, a study's grid or variant)."""
    out = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def parse_value(text: str):
    """The value of an override's right-hand side: TOML (`1e-3`, `true`, `[1, 2]`, `"x"`), else
    the bare text as a string (run_dir=runs/x)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def toml_value(value) -> str:
    """A value as the right-hand side of an override (`parse_value` reads it back)."""
    import tomli_w

    return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """`section.key=value` items written into the nested table `values` (in place)."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not section.key=value")
        node = values
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = parse_value(text.strip())
    return values


def load(path: str | Path | None, cls, overrides: list[str] = ()):
    """`cls` from the TOML file `path` (None: the defaults) with the overrides applied; an
    error names the file and the key."""
    values = read_toml(path) if path else {}
    values = apply_overrides(values, list(overrides))
    try:
        return from_table(cls, values)
    except ConfigError as exc:
        raise ConfigError(f"{path or 'config'}: {exc}") from None


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """A training run's configuration: the TOML file (None: the defaults) and overrides."""
    return load(path, RunConfig, overrides)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def dump_toml(cfg) -> str:
    """The resolved configuration as TOML (what RUN/config.toml holds)."""
    import tomli_w

    return tomli_w.dumps(to_dict(cfg))
