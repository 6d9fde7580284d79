"""The distributed set-up of a training run: the Accelerator (DDP over gloo/NCCL, or DeepSpeed
ZeRO), launch checks, per-rank BatchNorm statistics and the stop-signal agreement.

Beware `accelerate launch --cpu --num_processes 2`: it starts ONE process. Set
distributed.expect_processes (`shg train --nproc N` does) and a launch that yields another
world size fails.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
from datetime import timedelta
from pathlib import Path

import torch

from ..errors import UserError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_accelerator(cfg):
    """(Accelerator, DeepSpeed config or None) for a RunConfig whose mixed_precision is
    resolved."""
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    cpu = not torch.cuda.is_available()
    deepspeed = bool(cfg.distributed.deepspeed_config)
    if cpu and int(os.environ.get("WORLD_SIZE", "1")) > 1 and not deepspeed:
        # several CPU ranks: Accelerate's multi-CPU mode (what `--nproc N` and the Slurm jobs
        # start; `accelerate launch --multi_gpu` with ACCELERATE_USE_CPU=true does the same)
        os.environ["ACCELERATE_USE_CPU"] = "true"
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        # Accelerate's state is one per process; a process that trains several runs one after
        # another (a notebook, the tests, an AE study) starts each from a fresh one, with its
        # own mixed precision. (A private API, the one Accelerate's own tests use.)
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
    # Only for real multi-process launches: given to a single process, Accelerate would ask
    # for a process group that nobody initialised.
    multi = int(os.environ.get("WORLD_SIZE", "1")) > 1 or deepspeed
    if deepspeed and "WORLD_SIZE" not in os.environ:
        # DeepSpeed always wants a process group; without a launcher it would try MPI.
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port()))
    kwargs = [InitProcessGroupKwargs(backend="gloo" if cpu else "nccl",
                                     timeout=timedelta(seconds=cfg.distributed.timeout_s))
              ] if multi else []
    if cfg.mixed_precision == "fp16" and cpu:
        raise UserError("mixed_precision=fp16 needs a GPU; use bf16 on CPU")
    if deepspeed:
        from accelerate.utils import DeepSpeedPlugin

        ds = deepspeed_config(cfg)
        # ACCELERATE_USE_CPU (set for CPU DDP launches) would make Accelerate fall back to DDP.
        os.environ.pop("ACCELERATE_USE_CPU", None)
        # Not cpu=True here: Accelerate would then fall back to plain DDP and drop DeepSpeed.
        return Accelerator(deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=ds),
                           kwargs_handlers=kwargs), ds
    return Accelerator(cpu=cpu, mixed_precision=cfg.mixed_precision, kwargs_handlers=kwargs), None


def deepspeed_config(cfg) -> dict:
    """The user's DeepSpeed JSON with the values that must agree with our config filled in
    (no "auto": nothing here is derived from a prepared DataLoader)."""
    path = Path(cfg.distributed.deepspeed_config)
    try:
        ds = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"distributed.deepspeed_config: {path}: cannot read it ({exc})") from None
    ds["train_micro_batch_size_per_gpu"] = cfg.train.batch_size
    ds["gradient_accumulation_steps"] = cfg.train.grad_accum
    ds.pop("train_batch_size", None)
    ds["gradient_clipping"] = cfg.train.clip_grad
    # DeepSpeed's bf16 mode keeps bf16 weights and breaks BatchNorm; autocast keeps fp32 weights.
    ds.pop("bf16", None)
    ds.pop("fp16", None)
    if cfg.mixed_precision == "bf16":
        ds["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    elif cfg.mixed_precision == "fp16":
        ds["fp16"] = {"enabled": True}
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2):
        raise UserError(f"{path}: ZeRO stage {stage} is not supported (use 1 or 2)")
    if stage:
        # DeepSpeed's buckets default to 5e8 elements (2 GB of fp32 per rank), whatever the
        # model: an SHG has 25 M parameters, and every step fills and moves the whole bucket
        # (2 s a step on CPU for the 1-stack test model, 0.1 s with a bucket of its size).
        # A bucket as large as the model reduces it in one go, as the default does.
        # (rounded up: DeepSpeed wants bucket sizes aligned for NCCL)
        zero, size = ds["zero_optimization"], -(-parameter_count(cfg) // 4096) * 4096
        for key in ("reduce_bucket_size", "allgather_bucket_size"):
            zero.setdefault(key, min(size, 500_000_000))
    return ds


def parameter_count(cfg) -> int:
    """The parameters of the network `cfg` asks for (built on the meta device: no memory)."""
    from ..models import count_parameters, from_config

    with torch.device("meta"):
        return count_parameters(from_config(cfg))


def check_launch(cfg, accelerator) -> None:
    """Fail loudly on launches that silently give another world size than intended."""
    expected = cfg.distributed.expect_processes
    trap = (os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true"
            and "MASTER_ADDR" in os.environ and "WORLD_SIZE" not in os.environ)
    if expected and expected != accelerator.num_processes:
        hint = (" `accelerate launch --cpu --num_processes N` starts ONE process: use "
                "`ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes N`, "
                "`torchrun --standalone --nproc_per_node N` or `shg train --nproc N`."
                if trap else "")
        raise UserError(f"expected {expected} processes, the launch gave "
                        f"{accelerator.num_processes}.{hint}")
    if trap and accelerator.is_main_process:
        logging.getLogger(__name__).warning(
            "shg train: WARNING: started by `accelerate launch --cpu`, which runs a single "
            "process whatever --num_processes says. For several CPU processes use "
            "`ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes N` "
            "(set distributed.expect_processes=N to make this an error).")


def batchnorm_mode(cfg, world: int) -> str:
    mode = cfg.distributed.batchnorm
    if mode == "auto":
        mode = "sync" if torch.cuda.is_available() and world > 1 else "rank0"
    if mode == "sync" and not torch.cuda.is_available():
        raise UserError("distributed.batchnorm=sync needs CUDA (SyncBatchNorm refuses CPU); "
                        "use rank0")
    return mode


def broadcast_buffers(model, accelerator) -> None:
    """Per-rank BatchNorm: make every rank hold rank 0's running statistics (before validation
    and saving). Under DDP this equals what DDP's next forward would broadcast anyway. One
    broadcast per dtype, not one per buffer (an 8-stack SHG has ~1,500 of them)."""
    if accelerator.num_processes == 1:
        return
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for buf in unwrap(model, accelerator).buffers():
        by_dtype.setdefault(buf.dtype, []).append(buf.data)
    for bufs in by_dtype.values():
        flat = _flatten_dense_tensors(bufs)
        torch.distributed.broadcast(flat, src=0)
        for buf, value in zip(bufs, _unflatten_dense_tensors(flat, bufs)):
            buf.copy_(value)


def unwrap(model, accelerator) -> torch.nn.Module:
    """The model itself, out of its DDP / DeepSpeed / torch.compile wrappers."""
    if "deepspeed" in sys.modules:
        # (a DeepSpeed engine exists only once deepspeed is imported)
        m = accelerator.unwrap_model(model)
    else:
        # Accelerate's unwrap imports deepspeed whenever it is installed, only to test
        # isinstance: 1.5 s of start-up and 1 s of shut-down in every plain DDP process
        m = getattr(model, "_orig_mod", model)
        while isinstance(m, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            m = m.module
    return getattr(m, "_orig_mod", m)


def any_rank(flag, accelerator) -> bool:
    """True on every rank when `flag` (a bool, or a one-element tensor on the device) is true
    on any rank (one all-reduce)."""
    if isinstance(flag, torch.Tensor):
        value = flag.detach().reshape(1).float().to(accelerator.device)
    else:
        value = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    if accelerator.num_processes > 1:
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item() > 0)


class StopSignals:
    """Slurm's warning signals (USR2 before a time-out, TERM + USR2 on preemption): the handler
    only records the signal; the loop asks `agreed()` after every step, so every rank finishes
    its step and they save together."""

    def __init__(self, names: list[str]):
        self.received: str | None = None
        self._previous = {}
        for name in names:
            sig = getattr(signal, f"SIG{name}")
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name

    def restore(self) -> None:
        """Put back the handlers that were there before (training in a process that goes on:
        a notebook, a test, a study of several runs)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def agreed(self, accelerator) -> bool:
        """True on every rank as soon as any rank got a stop signal."""
        return any_rank(self.received is not None, accelerator)


def end_process_after_deepspeed() -> None:
    """Make this process end with os._exit(0) once its caller is done: registered last, this
    exit handler runs first, after everything the caller wrote at its own end (DeepSpeed's
    abort comes later in the interpreter's shutdown)."""
    import atexit

    def _exit_now() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    atexit.register(_exit_now)
