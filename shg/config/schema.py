"""The training run's configuration schema: nested dataclasses, one per `[section]` of a
config TOML, with their defaults and checks.

Every field is documented where it is declared; `__post_init__` checks values (cross-field
checks in RunConfig's). Reading TOML files and `section.key=value` overrides into these classes
is shg/config/loader.py's job.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from shards.sample import SampleConfig

from ..errors import ConfigError

PRECISIONS = ("auto", "no", "bf16", "fp16")
"""Values of mixed_precision (a training config's, a Slurm profile's)."""


def _choice(name: str, value, options) -> None:
    if value not in options:
        raise ConfigError(f"{name} must be one of {list(options)}, not {value!r}")


@dataclass
class DataConfig(SampleConfig):
    """The `[data]` section: where the shards are and, inherited from the data layer's
    `SampleConfig` (its fields are documented there), how stored crops become training samples
    (target sigma, augmentation ranges)."""

    shards: str = ""
    """Shard directory holding manifest.json (from `shg shards build`)."""
    train_split: str = "train2017"
    val_split: str = "val2017"
    num_workers: int = 2
    """Loader processes per training process (0 = load in the training process)."""
    shuffle_buffer: int = 256
    """Samples held in each loader worker's shuffle buffer."""
    on_error: str = "raise"
    """A damaged shard or sample met in training: "raise" (stop, naming shard and sample) or
    "skip" (leave it out, counted as skipped_samples in metrics.jsonl and the summary)."""

    def __post_init__(self) -> None:
        try:
            super().__post_init__()
        except ValueError as exc:
            raise ConfigError(f"data.{exc}") from None
        _choice("data.on_error", self.on_error, ("raise", "skip"))
        if self.num_workers < 0:
            raise ConfigError("data.num_workers must be >= 0")
        if self.shuffle_buffer < 1:
            raise ConfigError("data.shuffle_buffer must be >= 1")

    def sample_config(self) -> SampleConfig:
        """The data layer's settings from this section (the one place that converts them)."""
        return SampleConfig(**{f.name: getattr(self, f.name)
                               for f in dataclasses.fields(SampleConfig)})


@dataclass
class ModelConfig:
    stacks: int = 8
    """Number of stacked hourglasses (Newell: 8)."""
    features: int = 256
    """Channels F inside the hourglasses (Newell: 256)."""
    joints: int = 0
    """Heatmaps the network outputs: 0 = the joints of the shards' keypoint schema (17 for
    COCO person); another count than the shards' is an error."""
    init: str = "xavier_normal"
    """"xavier_normal" (Glorot normal, the thesis) or "default" (PyTorch's)."""
    zero_heads: bool = True
    """Start the heatmap output convs at zero (the network starts at the all-zero prediction
    instead of ~100x too large heatmaps; much faster start, see shg/model.py)."""
    channels_last: bool = True
    """NHWC memory format (faster convolutions on CPU and tensor cores)."""
    skips: bool = True
    """Ablation: false trains an SHG without the hourglass skip (up) branches - no parameters
    for them (8 stacks, F = 256: 18,573,064 instead of 25,437,960 parameters)."""
    bottleneck_features: int = 0
    """Ablation (thesis 6.4): channels of the innermost hourglass level (0 = features); a
    narrower bottleneck instead of an autoencoder."""

    def __post_init__(self) -> None:
        if self.stacks < 1 or self.features < 2 or self.features % 2 or self.joints < 0:
            raise ConfigError("model: need stacks >= 1, even features >= 2, joints >= 0 (0: the "
                              "shards' joints)")
        if self.bottleneck_features < 0 or self.bottleneck_features % 2:
            raise ConfigError("model.bottleneck_features must be 0 (= features) or even > 0")
        _choice("model.init", self.init, ("xavier_normal", "default"))


@dataclass
class OptimConfig:
    name: str = "rmsprop"
    """"rmsprop" (Newell), "sgd" (with momentum) or "adam"."""
    lr: float = 2.5e-4
    momentum: float = 0.9
    """SGD momentum (ignored by RMSProp and Adam)."""
    weight_decay: float = 0.0
    schedule: str = "step"
    """"step" (multiply by gamma at each milestone), "cosine" or "constant"."""
    milestones: list[float] = field(default_factory=lambda: [0.75, 0.9])
    """Step schedule's milestones as fractions of train.max_steps."""
    gamma: float = 0.1
    warmup_steps: int = 0
    """Linear warm-up from 0 over this many optimizer steps."""

    def __post_init__(self) -> None:
        _choice("optim.name", self.name, ("rmsprop", "sgd", "adam"))
        _choice("optim.schedule", self.schedule, ("step", "cosine", "constant"))
        if self.lr <= 0:
            raise ConfigError("optim.lr must be > 0")
        if any(not 0 < m <= 1 for m in self.milestones):
            raise ConfigError("optim.milestones are fractions of max_steps in (0, 1]")
        if self.warmup_steps < 0:
            raise ConfigError("optim.warmup_steps must be >= 0")


@dataclass
class TrainLoopConfig:
    batch_size: int = 16
    """Samples per process per micro-step (the global batch is x processes x grad_accum)."""
    max_steps: int = 1000
    """Optimizer steps in the whole run."""
    seed: int = 0
    grad_accum: int = 1
    clip_grad: float = 0.0
    """Clip the gradient norm to this value (0 = off)."""
    log_every: int = 10
    data_wait_warn: float = 0.3
    """Warn once when more than this share of the step time waited for the loader over three
    log intervals in a row, with the data.num_workers that would keep up (0 = never)."""
    compile: bool = False
    """torch.compile the model (first steps slower, later ones faster)."""
    deterministic: bool = False
    """torch.use_deterministic_algorithms: bit-exact reruns and resumes (slower on GPU)."""
    init_from: str = ""
    """Start from the weights of a checkpoint or .safetensors (fresh optimizer, step 0)."""
    stop_signals: list[str] = field(default_factory=lambda: ["USR2", "TERM"])
    """On these signals (Slurm's warning before a time-out or preemption) every rank finishes
    its step, a checkpoint is saved collectively and the run exits with code 75 (requeue it:
    it resumes from there)."""

    def __post_init__(self) -> None:
        import signal as _signal

        for name in self.stop_signals:
            if not hasattr(_signal, f"SIG{name}"):
                raise ConfigError(f"train.stop_signals: unknown signal {name!r} (e.g. USR1, "
                                  "USR2, TERM)")
        for name in ("batch_size", "max_steps", "grad_accum", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1")
        if self.clip_grad < 0:
            raise ConfigError("train.clip_grad must be >= 0")
        if not 0.0 <= self.data_wait_warn < 1.0:
            raise ConfigError("train.data_wait_warn must be in [0, 1)")


@dataclass
class EvalConfig:
    every_steps: int = 500
    """Validate (val loss and PCK) every this many steps, and at the end."""
    batch_size: int = 32
    max_samples: int = 0
    """Validate on the first N samples only (0 = the whole split)."""
    thresholds: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2, 0.5])
    select: str = "constant@0.5"
    """The PCK that chooses best/: "constant@T" (thesis) or "bbox@T"; never the val loss."""
    early_stop_patience: int = 0
    """Stop after this many validations without a better PCK (0 = never, as the thesis)."""

    def __post_init__(self) -> None:
        norm, _, thr = self.select.partition("@")
        if norm not in ("constant", "bbox") or not thr:
            raise ConfigError('eval.select must look like "constant@0.5" or "bbox@0.2"')
        try:
            float(thr)
        except ValueError:
            raise ConfigError(f"eval.select threshold {thr!r} is not a number") from None
        if self.every_steps < 1 or self.batch_size < 1:
            raise ConfigError("eval.every_steps and eval.batch_size must be >= 1")
        if not any(abs(t - float(thr)) < 1e-12 for t in self.thresholds):
            raise ConfigError(f"eval.select={self.select} needs {float(thr):g} in "
                              f"eval.thresholds (now {self.thresholds})")

    @property
    def select_metric(self) -> str:
        """The validation metric eval.select names, as logged: "pck_constant@0.5"."""
        norm, _, thr = self.select.partition("@")
        return f"pck_{norm}@{float(thr):g}"


@dataclass
class CheckpointConfig:
    every_steps: int = 500
    """Save RUN/checkpoints/step-N every this many steps (and at the end)."""
    keep: int = 2
    """Newest complete checkpoints kept (>= 2; best/ is kept apart)."""
    resume: str = "auto"
    """"auto" (newest complete checkpoint if any), "none" (start over) or a checkpoint path."""

    def __post_init__(self) -> None:
        if self.every_steps < 1:
            raise ConfigError("checkpoint.every_steps must be >= 1")
        if self.keep < 2:
            raise ConfigError("checkpoint.keep must be >= 2 (a crash while saving must leave "
                              "a complete one)")


@dataclass
class DistributedConfig:
    deepspeed_config: str = ""
    """DeepSpeed JSON (configs/deepspeed_zero{1,2}.json); empty = plain DDP."""
    batchnorm: str = "auto"
    """"sync" (SyncBatchNorm, CUDA only), "rank0" (per-rank BN, rank 0's running statistics
    broadcast before every validation and save), or "auto" (sync on multi-GPU, else rank0)."""
    timeout_s: int = 1800
    """Collective operations that wait longer fail (a dead rank ends the run, not hangs it)."""
    expect_processes: int = 0
    """The world size this run must have (0 = any). `shg train --nproc N` sets it, so a launch
    that silently yields another number of processes (`accelerate launch --cpu`) is an error."""

    def __post_init__(self) -> None:
        _choice("distributed.batchnorm", self.batchnorm, ("auto", "sync", "rank0"))
        if self.expect_processes < 0 or self.timeout_s < 1:
            raise ConfigError("distributed: need expect_processes >= 0 and timeout_s >= 1")


@dataclass
class AEConfig:
    """The bottleneck autoencoder (task = "ae" or "pose_ae"; see shg/autoencoder.py)."""

    stack: int = -1
    """Which stack's bottleneck (-1 = the last)."""
    hidden: int = 128
    channels: int = 64
    """Latent channels; with downsample the latent is channels x 2 x 2."""
    downsample: bool = True
    noise: float = 0.1
    """Denoising: input x + N(0, (noise * x)^2) in phase 1."""
    shg_from: str = ""
    """The trained SHG: a run directory (its best/), a checkpoint directory or a .safetensors."""
    ae_from: str = ""
    """Phase 2: the phase-1 run (its best/), checkpoint or .safetensors holding the AE."""
    freeze_ae: bool = False
    """Phase 2: keep the AE fixed and train the SHG around it."""
    output: str = "relu"
    """The AE's output activation: "relu" (the thesis; the features are non-negative),
    "sigmoid" or "linear" (the committee's question)."""

    def __post_init__(self) -> None:
        if self.channels < 1 or self.hidden < 1 or self.noise < 0:
            raise ConfigError("ae: need channels >= 1, hidden >= 1, noise >= 0")
        _choice("ae.output", self.output, ("relu", "sigmoid", "linear"))


TRACKERS = ("tensorboard", "mlflow", "wandb", "aim", "comet_ml", "clearml", "dvclive")


@dataclass
class LogConfig:
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])
    """Experiment trackers the metrics rows also go to (Accelerate's tracker classes): any of
    tensorboard (RUN/tb), mlflow, wandb, aim, comet_ml, clearml, dvclive; [] for none. A
    resumed or requeued run continues the same tracker run (ids in RUN/trackers.json)."""
    project: str = "shg"
    """The MLflow experiment / W&B project."""
    mlflow_tracking_uri: str = ""
    """Where MLflow writes: a tracking server (http://host:5000) or a store (sqlite:///x.db);
    "" = MLFLOW_TRACKING_URI, else the store the run's first start wrote to, else MLflow's
    default, sqlite:///mlflow.db in the directory training starts in (docs/mlflow.md)."""

    def __post_init__(self) -> None:
        unknown = [t for t in self.trackers if t not in TRACKERS]
        if unknown:
            raise ConfigError(f"log.trackers: unknown {', '.join(map(repr, unknown))}; valid: "
                              f"{', '.join(TRACKERS)}")


@dataclass
class RunConfig:
    """A whole training run (the root of configs/*.toml)."""

    run_dir: str = "runs/shg"
    """Everything of a run goes here: config.toml, checkpoints/, best/, metrics.jsonl, tb/."""
    task: str = "pose"
    """"pose" (the SHG), "ae" (phase 1: the bottleneck AE on a frozen SHG) or "pose_ae"
    (phase 2: the SHG with the AE inserted, pose loss)."""
    mixed_precision: str = "auto"
    """"auto" (bf16 where the hardware computes it natively - GPUs with bf16, CPUs with
    avx512_bf16/AMX - else no), "no", "bf16" (autocast; fp32 weights) or "fp16" (CUDA only,
    with a grad scaler). bench/train_step.py measured bf16 + channels_last at ~5x the fp32
    step of the usual PyTorch port on an avx512_bf16 CPU; tests keep its loss curve near fp32's."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    ae: AEConfig = field(default_factory=AEConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self) -> None:
        _choice("task", self.task, ("pose", "ae", "pose_ae"))
        _choice("mixed_precision", self.mixed_precision, PRECISIONS)
        # cross-field checks: a run that cannot work fails when its config is read
        if self.task in ("ae", "pose_ae") and not self.ae.shg_from:
            raise ConfigError(f"task={self.task} needs ae.shg_from (the trained SHG run)")
        if self.task == "pose_ae" and not self.ae.ae_from:
            raise ConfigError("task=pose_ae needs ae.ae_from (the phase-1 AE run)")
        if self.task != "pose" and not -self.model.stacks <= self.ae.stack < self.model.stacks:
            raise ConfigError(f"ae.stack={self.ae.stack}: the model has {self.model.stacks} "
                              "stacks")
        if self.distributed.deepspeed_config and not Path(
                self.distributed.deepspeed_config).is_file():
            raise ConfigError(f"distributed.deepspeed_config: {self.distributed.deepspeed_config}"
                              " not found")
