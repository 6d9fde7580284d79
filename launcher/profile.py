"""Slurm site profiles: TOML files in slurm/profiles/, one place for a cluster's defaults.

Unknown keys are rejected with the list of valid ones (submitit's habit)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from shg.config import PRECISIONS, ConfigError, load


@dataclass
class Profile:
    folder: str = "runs/slurm"
    """Job folder on a filesystem every node sees: sbatch scripts, logs, pickled job calls."""
    partition: str = ""
    account: str = ""
    qos: str = ""
    constraint: str = ""
    time_min: int = 60
    """Wall-clock limit of each job, minutes."""
    nodes: int = 1
    """Nodes of the training job (preparation, evaluation and analysis use one)."""
    gpus_per_node: int = 0
    tasks_per_node: int = 1
    """Training processes per node: one per GPU (or per CPU slot on CPU nodes)."""
    cpus_per_task: int = 2
    mem_gb: int = 16
    setup: list[str] = field(default_factory=list)
    """Shell lines run before the job (module load ..., source .venv/bin/activate)."""
    signal_delay_s: int = 120
    """Slurm sends USR2 this long before a time-out: the trainer saves and exits for requeue."""
    max_requeues: int = 3
    prepare_tasks: int = 4
    """Array tasks that build shards in parallel."""
    array_parallelism: int = 0
    """At most this many tasks of one job array run at once (a study's variants, shard
    building); 0: no cap of ours (submitit's is 256)."""
    mixed_precision: str = ""
    """Training jobs' precision (auto, no, bf16, fp16); empty keeps the training config's."""
    deepspeed_config: str = ""
    """DeepSpeed JSON for the training jobs (configs/deepspeed_zero2.json); empty keeps the
    training config's (plain DDP unless it names one)."""
    mlflow_tracking_uri: str = ""
    """The MLflow tracking server the training jobs log to (http://login01:5000, started on the
    login node: docs/mlflow.md); empty: the job's MLFLOW_TRACKING_URI, else MLflow's default
    store in the submission directory."""

    def __post_init__(self) -> None:
        for name in ("time_min", "nodes", "tasks_per_node", "cpus_per_task", "mem_gb",
                     "prepare_tasks"):
            if getattr(self, name) < 1:
                raise ConfigError(f"profile: {name} must be >= 1")
        if min(self.gpus_per_node, self.max_requeues, self.signal_delay_s,
               self.array_parallelism) < 0:
            raise ConfigError("profile: gpus_per_node, max_requeues, signal_delay_s, "
                              "array_parallelism must be >= 0")
        if self.mixed_precision not in ("", *PRECISIONS):
            raise ConfigError(f"profile: mixed_precision {self.mixed_precision!r}; valid: "
                              f"{', '.join(PRECISIONS)} (or empty: the training config's)")
        if self.deepspeed_config and not Path(self.deepspeed_config).is_file():
            raise ConfigError(f"profile: deepspeed_config {self.deepspeed_config}: no such file")

    def training_overrides(self) -> list[str]:
        """Training config overrides the profile imposes (before the command line's own)."""
        out = []
        if self.mixed_precision:
            out.append(f"mixed_precision={self.mixed_precision}")
        if self.deepspeed_config:
            out.append(f"distributed.deepspeed_config={Path(self.deepspeed_config).absolute()}")
        if self.mlflow_tracking_uri:
            out.append(f"log.mlflow_tracking_uri={self.mlflow_tracking_uri}")
        return out

    def job_folder(self) -> Path:
        """`folder` with ~ and $VARS expanded ($USER falls back to the login name)."""
        import getpass
        import os
        import string

        env = {**os.environ, "USER": os.environ.get("USER") or getpass.getuser()}
        try:
            text = string.Template(os.path.expanduser(self.folder)).substitute(env)
        except (KeyError, ValueError) as e:
            raise ConfigError(f"profile: folder {self.folder!r}: cannot expand {e}") from None
        return Path(text).absolute()

    def slurm_parameters(self, training: bool = False) -> dict:
        """submitit parameters (AutoExecutor names) of one job."""
        params = {"timeout_min": self.time_min, "cpus_per_task": self.cpus_per_task,
                  "mem_gb": self.mem_gb, "nodes": self.nodes if training else 1,
                  "tasks_per_node": self.tasks_per_node if training else 1,
                  "slurm_signal_delay_s": self.signal_delay_s}
        if self.gpus_per_node:
            params["gpus_per_node"] = self.gpus_per_node if training else min(
                1, self.gpus_per_node)
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(self, key):
                params[f"slurm_{key}"] = getattr(self, key)
        if self.setup:
            params["slurm_setup"] = list(self.setup)
        return params


def load_profile(path: str | Path, overrides: list[str] = ()) -> Profile:
    return load(path, Profile, overrides)
