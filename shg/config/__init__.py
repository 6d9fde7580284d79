"""Training configuration: nested dataclasses read from TOML, with `section.key=value` overrides.

    schema.py    RunConfig and its sections: fields, defaults, checks
    loader.py    TOML files and overrides into dataclasses (also profiles' and study files'),
                 the resolved config.toml
    hardware.py  what mixed_precision = "auto" becomes on this machine

An unknown key is an error that lists the valid ones. The resolved configuration is written to
RUN/config.toml. This package's names below are the API; import them from `shg.config`.
"""

from ..errors import ConfigError
from .hardware import BF16_CPU_FLAGS, native_bf16, resolve_precision
from .loader import (apply_overrides, dump_toml, flatten, from_table, load, load_config,
                     parse_value, read_toml, to_dict, toml_value)
from .schema import (PRECISIONS, TRACKERS, AEConfig, CheckpointConfig, DataConfig,
                     DistributedConfig, EvalConfig, LogConfig, ModelConfig, OptimConfig,
                     RunConfig, TrainLoopConfig)

__all__ = [
    "ConfigError",
    "BF16_CPU_FLAGS", "native_bf16", "resolve_precision",
    "apply_overrides", "dump_toml", "flatten", "from_table", "load", "load_config",
    "parse_value", "read_toml", "to_dict", "toml_value",
    "PRECISIONS", "TRACKERS", "AEConfig", "CheckpointConfig", "DataConfig",
    "DistributedConfig", "EvalConfig", "LogConfig", "ModelConfig", "OptimConfig", "RunConfig",
    "TrainLoopConfig",
]
