"""Load a stage config: YAML files (with ``defaults:`` bases) + ``key=value`` overrides -> dataclass.

Order of precedence (later wins): schema defaults, each file named in ``defaults:`` (paths relative to
the including file, applied in order, recursively), the file itself, command-line overrides.
Unknown keys fail with the full dotted key and a did-you-mean; a wrong type fails naming the key.
Interpolation (``${train.max_steps}``, ``${oc.env:VAR}``) is OmegaConf's.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import typing
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from redone.config.schema import RunConfig
from redone.config.validate import validate
from redone.errors import ConfigError


def build_config(schema_cls: type[RunConfig], raw: DictConfig, overrides=(), origin: str = "<config>") -> RunConfig:
    """Turn a raw (already merged) DictConfig into a validated stage dataclass of ``schema_cls``.

    Stage names map to schema classes in ``redone.stages`` (the one registry); this module only knows
    the schema class it is given."""
    stage = schema_cls.stage
    raw = OmegaConf.merge(raw, parse_overrides(overrides))
    if "stage" in raw and raw.stage != stage:
        raise ConfigError(f"stage: {origin} is a '{raw.stage}' config, but --stage {stage} was given")
    raw.stage = stage
    check_unknown_keys(OmegaConf.to_container(raw, resolve=False), schema_cls, prefix="")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema_cls), raw)
        OmegaConf.resolve(merged)
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or getattr(err, "key", None) or "?"
        message = str(err).splitlines()[0]
        raise ConfigError(f"{key}: {message} ({origin})") from None
    validate(config)
    return config


def parse_overrides(overrides) -> DictConfig:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not key=value")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as err:
        raise ConfigError(f"override: {str(err).splitlines()[0]}") from None
    except yaml.YAMLError as err:  # a value that is broken YAML, e.g. data.sources=[{path: x
        bad = next((item for item in overrides if _broken_yaml(item.split("=", 1)[1])), overrides[-1])
        raise ConfigError(f"override: '{bad}' is not valid YAML ({getattr(err, 'problem', err)})") from None


def _broken_yaml(value: str) -> bool:
    try:
        yaml.safe_load(value)
    except yaml.YAMLError:
        return True
    return False


def read_yaml_with_defaults(path: Path, _seen: tuple[Path, ...] = ()) -> DictConfig:
    path = path.resolve()
    if path in _seen:
        raise ConfigError(f"defaults: {path} includes itself (cycle through {', '.join(map(str, _seen))})")
    node = read_yaml(path)
    bases = node.pop("defaults", []) if isinstance(node, DictConfig) else []
    if isinstance(bases, str):
        bases = [bases]
    merged = OmegaConf.create({})
    for base in bases:
        base_path = (path.parent / str(base)).resolve()
        if not base_path.exists():
            raise ConfigError(f"defaults: {path}: base file {base} not found")
        merged = OmegaConf.merge(merged, read_yaml_with_defaults(base_path, _seen + (path,)))
    return OmegaConf.merge(merged, node)


def read_yaml(path: Path) -> DictConfig:
    if not path.exists():
        raise ConfigError(f"config file {path} not found")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not valid UTF-8 (byte 0x{raw[err.start]:02x})") from None
    try:
        data = yaml.safe_load(text)  # PyYAML reports line numbers; OmegaConf then takes the dict
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML ({getattr(err, 'problem', err)})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of config keys")
    return OmegaConf.create(data)


def check_unknown_keys(node: Any, schema: Any, prefix: str) -> None:
    """Walk user keys against the dataclass fields; report the first unknown one with a suggestion."""
    if not isinstance(node, dict) or not dataclasses.is_dataclass(schema):
        return
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key, value in node.items():
        full = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; known keys: {', '.join(fields)}"
            raise ConfigError(f"{full}: unknown config key{hint}")
        child_schema = _field_schema(schema, key)
        if isinstance(value, list) and child_schema is not None:
            for i, item in enumerate(value):
                check_unknown_keys(item, child_schema, f"{full}[{i}].")
        elif child_schema is not None:
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"{full}: must be a mapping of keys (a section), got {type(value).__name__} "
                                  f"{value!r}")
            check_unknown_keys(value, child_schema, f"{full}.")
        elif prefix.endswith("]."):
            _check_item_scalar(schema, key, value, full)


def _check_item_scalar(schema: Any, key: str, value: Any, full: str) -> None:
    """A field inside a list item (``data.sources[0].path``): OmegaConf's own error would name only
    ``path``, so scalar types are checked here where the full key is known."""
    hint = typing.get_type_hints(schema).get(key)
    if typing.get_origin(hint) in (list, dict):
        return
    allowed = tuple(a for a in (getattr(hint, "__args__", None) or (hint,)) if a in (str, int, float, bool))
    if not allowed or value is None:
        return
    if isinstance(value, (dict, list)):
        names = " or ".join(a.__name__ for a in allowed)
        raise ConfigError(f"{full}: must be a {names}, got {type(value).__name__} {value!r}")


def _field_schema(schema: Any, key: str):
    """The dataclass type of a field (or of the items of a list/Optional field), else None."""
    hint = typing.get_type_hints(schema).get(key)
    if dataclasses.is_dataclass(hint):
        return hint
    for arg in getattr(hint, "__args__", ()):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def config_to_dict(config: RunConfig) -> dict:
    return dataclasses.asdict(config)


def config_to_yaml(config: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def config_hash(config: RunConfig | dict, keys: tuple[str, ...] | None = None) -> str:
    """Stable hash of the whole config, or of the named top-level sections only."""
    data = config if isinstance(config, dict) else config_to_dict(config)
    if keys is not None:
        data = {k: data.get(k) for k in keys}
    blob = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# Settings that change how a run is driven, never what it computes: ignored when deciding whether a
# finished stage is up to date or a checkpoint belongs to the same run.
RUN_CONTROL_KEYS = ("resume", "force_resume", "stop_after_steps", "progress")


def result_hash(config: RunConfig) -> str:
    data = config_to_dict(config)
    data["train"] = {k: v for k, v in data["train"].items() if k not in RUN_CONTROL_KEYS}
    return config_hash(data)
