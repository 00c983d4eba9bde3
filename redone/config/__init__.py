"""Config: typed schema (schema.py), YAML + overrides loading (load.py), cross-field checks (validate.py).

Which schema belongs to which stage name is the stage registry's business (``redone.stages``)."""

from redone.config.load import build_config, config_hash, config_to_dict, config_to_yaml
from redone.config.schema import RunConfig

__all__ = ["RunConfig", "build_config", "config_hash", "config_to_dict", "config_to_yaml"]
