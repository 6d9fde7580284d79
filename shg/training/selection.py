"""Which validation decides best/ and early stopping: a metric and a direction.

Pose tasks select by eval.select's PCK, higher is better (the thesis: never by validation loss);
AE phase 1 by the reconstruction MSE of the clean validation latents, lower is better.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Selection:
    metric: str
    """The key of the validation metrics that decides, e.g. "pck_constant@0.5"."""
    higher_is_better: bool
    label: str
    """How the log names it."""

    @classmethod
    def for_run(cls, cfg) -> "Selection":
        if cfg.task == "ae":
            return cls("val_recon_mse", False, "reconstruction MSE")
        return cls(cfg.eval.select_metric, True, f"PCK {cfg.eval.select}")

    def better(self, value: float, best: float | None) -> bool:
        if best is None:
            return True
        return value > best if self.higher_is_better else value < best

    def value(self, metrics: dict) -> float:
        if self.metric not in metrics:
            raise KeyError(f"validation gave no {self.metric} (has {sorted(metrics)})")
        return float(metrics[self.metric])
