"""Config: typed schema (schema.py), YAML + overrides loading (load.py), cross-field checks (validate.py)."""

from redone.config.load import build_config, config_hash, config_to_dict, config_to_yaml, load_config
from redone.config.schema import STAGE_CONFIGS, STAGES, RunConfig

__all__ = ["RunConfig", "STAGES", "STAGE_CONFIGS", "build_config", "config_hash", "config_to_dict",
           "config_to_yaml", "load_config"]
