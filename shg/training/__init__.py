"""Training: the Trainer and its loop (trainer.py), with the run's set-up (setup.py), the
distributed environment (distributed.py), optimizer and schedule (optim.py), validation
(validation.py), best-model selection (selection.py), checkpoints and best/ (checkpoint.py),
the metrics log (metrics_log.py), local multi-process launches (launch.py) and test fault
injection (faults.py). `run(cfg)` is the entry every launcher calls."""

from .entry import run

__all__ = ["run"]
