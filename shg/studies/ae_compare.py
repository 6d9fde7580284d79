"""The bottleneck-autoencoder study (`shg ae train | finetune | compare`): the two AE phases
and the fair comparison.

Every phase is an ordinary `shg train` run (so it has the same Accelerate/DDP/DeepSpeed,
mixed-precision and checkpoint/resume behaviour) whose configuration starts from the SHG run's
own resolved config.toml:

    shg ae train    --run RUN [key=value ...]      phase 1 -> RUN-ae          (task = "ae")
    shg ae finetune --run RUN --ae RUN-ae [...]    phase 2 -> RUN-ae-finetune (task = "pose_ae")
    shg ae compare  --run RUN --ae RUN-ae --out OUT [...]
        runs phase 2 and a baseline that continues the plain SHG from the same weights for the
        same number of steps (RUN-continue), then writes OUT/compare.{json,md} and
        OUT/compare.png, so one sees whether a gain comes from the AE or from longer training.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import UserError
from ..visualize import pyplot, save_figure
from .records import run_config
from .tables import markdown_table, write_tables


def phase_overrides(phase: str, run: str, ae_run: str = "") -> tuple[str, list[str]]:
    """(run directory, config overrides) of one phase started from the SHG run `run`: the
    command line runs them here, `shg submit ae` queues the same as Slurm training jobs."""
    run = run.rstrip("/")
    if phase == "train":
        out = f"{run}-ae"
        return out, ["task=ae", f"ae.shg_from={run}", f"run_dir={out}"]
    if phase == "finetune":
        out = f"{run}-ae-finetune"
        return out, ["task=pose_ae", f"ae.shg_from={run}", f"ae.ae_from={ae_run or run + '-ae'}",
                     f"run_dir={out}"]
    if phase == "baseline":
        out = f"{run}-continue"
        return out, ["task=pose", f"train.init_from={run}", f"run_dir={out}"]
    raise UserError(f"unknown AE phase {phase!r}; valid: train, finetune, baseline")


def config_file(run: str) -> Path:
    """RUN/config.toml of the SHG run every phase starts from."""
    config = Path(run) / "config.toml"
    if not config.is_file():
        raise UserError(f"{run}: no config.toml (is it a `shg train` run directory?)")
    return config


def _train(phase: str, run: str, ae_run: str, overrides: list[str], nproc: int) -> Path:
    """One phase as a training run of its own: in this process on one process (as `shg train`
    does), else as `nproc` new processes. DeepSpeed runs always get a process of their own
    (DeepSpeed may abort at interpreter exit, see shg/training/entry.py)."""
    from ..config import load_config
    from ..training import run as run_training
    from ..training.launch import train_processes

    out, phase_args = phase_overrides(phase, run, ae_run)
    config = str(config_file(run))
    args = ["checkpoint.resume=auto", *phase_args, *overrides]
    cfg = load_config(config, args)  # a bad override stops here, before anything trains
    if nproc == 1 and not cfg.distributed.deepspeed_config:
        code = run_training(cfg, hard_exit=False)
    else:
        code = train_processes(["--config", config, *args], nproc)
    if code:
        raise UserError(f"AE {phase} training failed (exit {code}): shg train --config "
                        f"{config} " + " ".join(args))
    return Path(out)


def phase1(run: str, overrides: list[str], nproc: int = 1) -> Path:
    return _train("train", run, "", overrides, nproc)


def phase2(run: str, ae_run: str, overrides: list[str], nproc: int = 1) -> Path:
    return _train("finetune", run, ae_run, overrides, nproc)


def baseline(run: str, overrides: list[str], nproc: int = 1) -> Path:
    return _train("baseline", run, "", overrides, nproc)


def _validations(run: Path) -> list[dict]:
    from ..training.metrics_log import read_metrics

    return [r for r in read_metrics(run) if "val_loss" in r]


def compare(run: str, ae_run: str, out: str, overrides: list[str], nproc: int = 1) -> dict:
    finetuned = phase2(run, ae_run, overrides, nproc)
    base = baseline(run, overrides, nproc)
    return write_comparison(run, base, finetuned, out)


def write_comparison(run: str, base: Path | str, finetuned: Path | str, out: str) -> dict:
    """compare.{json,md,png} in `out` from the baseline and the phase-2 run's metrics."""
    base, finetuned = Path(base), Path(finetuned)
    out_dir = Path(out)
    table = {}
    for name, path in (("baseline (continue SHG)", base), ("SHG + AE (phase 2)", finetuned)):
        vals = _validations(path)
        if not vals:
            raise UserError(f"{path}: no validation in metrics.jsonl")
        pck_keys = sorted(k for k in vals[-1] if k.startswith("pck_"))
        best = max(vals, key=lambda r: r["best_score"])
        table[name] = {"run": str(path), "steps": vals[-1]["step"],
                       "final": {k: vals[-1][k] for k in ["val_loss", *pck_keys]},
                       "best_score": best["best_score"],
                       "curve": [{"step": r["step"], "val_loss": r["val_loss"],
                                  **{k: r[k] for k in pck_keys}} for r in vals]}
    names = list(table)
    keys = list(table[names[0]]["final"])
    rows = []
    for k in ["steps", *keys, "best_score"]:
        a = table[names[0]]["steps"] if k == "steps" else (
            table[names[0]]["best_score"] if k == "best_score" else table[names[0]]["final"][k])
        b = table[names[1]]["steps"] if k == "steps" else (
            table[names[1]]["best_score"] if k == "best_score" else table[names[1]]["final"][k])
        rows.append([k, f"{a:.4g}", f"{b:.4g}", f"{b - a:+.4g}"])
    lines = markdown_table(["metric", *names, "difference"], rows)
    write_tables(out_dir, "compare", table, [
        "# Bottleneck AE vs longer training", "",
        f"Both start from `{run}` and train the same number of steps with the same data order "
        "and schedule.", "", *lines, "", "![validation curves](compare.png)", ""])
    plt = pyplot()
    select = _selection_metric(finetuned, keys)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for name in names:
        curve = table[name]["curve"]
        steps = [r["step"] for r in curve]
        axes[0].plot(steps, [r[select] for r in curve], "o-", label=name)
        axes[1].plot(steps, [r["val_loss"] for r in curve], "o-", label=name)
    axes[0].set_title(select)
    axes[1].set_title("validation loss")
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend()
    fig.tight_layout()
    save_figure(fig, out_dir / "compare.png", dpi=100)
    logging.getLogger(__name__).info("%s", "\n".join(lines))
    return table


def _selection_metric(run: Path, keys: list[str]) -> str:
    """The metric the phase-2 run selects by (its eval.select_metric), as the leaderboard
    uses; the last PCK key when its config cannot be read."""
    cfg = run_config(run)
    return cfg.eval.select_metric if cfg and cfg.eval.select_metric in keys else keys[-1]
