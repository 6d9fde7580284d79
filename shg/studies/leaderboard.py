"""A study's leaderboard: one row a variant from its run directory and the state its jobs
reached, ranked by the best selection-metric value; STUDY_DIR/leaderboard.{md,json},
pck_curves.png and final_scores.png."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..run_status import hms
from ..visualize import pyplot, save_figure
from .records import EVAL_DIRS, run_config
from .tables import markdown_table, write_tables

CROWD_KEYS = ("AP_easy", "AP_medium", "AP_hard")
"""coco_eval.json's AP by crowd index (CrowdPose): columns AP(E), AP(M), AP(H) when present."""


@dataclass
class VariantResult:
    name: str
    overrides: list[str]
    state: str
    why: str = ""
    selection_metric: str = ""
    best: float | None = None
    best_step: int | None = None
    pck_bbox_02: float | None = None
    coco_ap: float | None = None
    ap_easy: float | None = None
    ap_medium: float | None = None
    ap_hard: float | None = None
    """CrowdPose's AP by crowd index (when the annotation file has crowdIndex)."""
    steps: int | None = None
    train_seconds: float | None = None
    by_loss: dict = field(default_factory=dict)
    """The best-by-validation-loss model's scores (best_by_loss = true)."""
    curve: list = field(default_factory=list)
    """(step, selection metric) of every validation."""


def _eval_scores(run: Path, which: str) -> dict:
    path = run / EVAL_DIRS[which] / "summary.json"
    if not path.is_file():
        return {}
    s = json.loads(path.read_text())
    coco = s.get("coco", {})
    return {"pck_bbox_02": s.get("pck", {}).get("bbox", {}).get("0.2"),
            "coco_ap": coco.get("AP"),
            **{k.lower(): coco[k] for k in CROWD_KEYS if k in coco}}


def variant_result(entry: dict, state: str, why: str, best_by_loss: bool) -> VariantResult:
    """One variant's row from its run directory (config, metrics.jsonl, best/, summary.json,
    eval/) and the state its jobs reached."""
    from ..training.metrics_log import read_metrics

    run = Path(entry["run"])
    result = VariantResult(entry["name"], entry["overrides"], state, why)
    cfg = run_config(run)
    metric = cfg.eval.select_metric if cfg else ""
    result.selection_metric = metric
    if (run / "metrics.jsonl").is_file():
        rows = read_metrics(run)
        result.curve = [(r["step"], r[metric]) for r in rows if metric and metric in r]
        steps = [r["step"] for r in rows if "step" in r]
        result.steps = max(steps) if steps else None
    summary = run / "summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        result.steps, result.train_seconds = s.get("step"), s.get("train_seconds")
    info = run / "best" / "info.json"
    if info.is_file():
        best = json.loads(info.read_text())
        result.best, result.best_step = best["metrics"].get(metric), best.get("step")
    result.__dict__.update({k: v for k, v in _eval_scores(run, "best").items()})
    if best_by_loss:
        result.by_loss = _eval_scores(run, "best_by_loss")
        info = run / "best_by_loss" / "info.json"
        if info.is_file():
            result.by_loss["step"] = json.loads(info.read_text()).get("step")
    return result


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def write_leaderboard(study_dir: str | Path, results: list[VariantResult], record: dict) -> dict:
    """leaderboard.md, leaderboard.json, pck_curves.png and final_scores.png in study_dir;
    returns the JSON object. Variants are ranked by their best selection-metric value."""
    study_dir = Path(study_dir)
    ranked = sorted(results, key=lambda r: (r.best is None, -(r.best or 0.0), r.name))
    done = [r for r in ranked if r.best is not None]
    unfinished = [r for r in ranked if r.state != "finished"]
    board = {"study": record["study"], "description": record.get("description", ""),
             "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
             "boxes": record.get("boxes"),
             "best_variant": done[0].name if done else None,
             "selection_metric": done[0].selection_metric if done else None,
             "variants": [{k: v for k, v in asdict(r).items() if k != "curve"} for r in ranked]}
    by_loss = record.get("best_by_loss")
    lines = [f"# Study {record['study']}", ""]
    if record.get("description"):
        lines += [record["description"], ""]
    crowd = any(getattr(r, k.lower()) is not None for r in ranked for k in CROWD_KEYS)
    boxes = record.get("boxes")
    on = (f"the person boxes of `{boxes}` (COCO AP on detections)" if boxes
          else "the ground-truth boxes of the shards")
    header = (["rank", "variant", "overrides",
               "best " + (done[0].selection_metric if done else ""), "step", "bbox PCK@0.2",
               "COCO AP"] + (["AP(E)", "AP(M)", "AP(H)"] if crowd else [])
              + ["steps", "train time", "state"]
              + (["bbox PCK@0.2 by loss", "COCO AP by loss"] if by_loss else []))
    rows = []
    for i, r in enumerate(ranked, 1):
        rows.append([i, r.name, " ".join(f"`{o}`" for o in r.overrides) or "(config)",
                     _fmt(r.best), _fmt(r.best_step), _fmt(r.pck_bbox_02), _fmt(r.coco_ap)]
                    + [_fmt(getattr(r, k.lower())) for k in CROWD_KEYS if crowd]
                    + [_fmt(r.steps), hms(r.train_seconds), r.state]
                    + ([_fmt(r.by_loss.get("pck_bbox_02")), _fmt(r.by_loss.get("coco_ap"))]
                       if by_loss else []))
    text_columns = (header.index("variant"), header.index("overrides"), header.index("state"))
    lines += [f"Evaluated on: {on}.", "",
              f"Best variant: **{board['best_variant']}**" if done else
              "No variant has a validated model yet.", "",
              *markdown_table(header, rows,
                              right=[i for i in range(len(header)) if i not in text_columns])]
    if by_loss:
        lines += ["", "*by loss*: the same variant's model kept by the lowest validation loss "
                      "(best_by_loss/) instead of the best selection metric (best/)."]
    if unfinished:
        lines += ["", "## Not finished", ""]
        lines += [f"- **{r.name}**: {r.state}" + (f": {r.why}" if r.why else "")
                  for r in unfinished]
    lines += ["", "![validation curves](pck_curves.png)", "", "![final scores](final_scores.png)",
              ""]
    write_tables(study_dir, "leaderboard", board, lines)
    _plots(study_dir, ranked)
    return board


def _plots(study_dir: Path, ranked: list[VariantResult]) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in ranked:
        if r.curve:
            steps, values = zip(*r.curve)
            ax.plot(steps, values, marker="o", markersize=3, label=r.name)
    metric = next((r.selection_metric for r in ranked if r.selection_metric), "")
    ax.set(xlabel="step", ylabel=f"validation {metric}", title="validation during training")
    if any(r.curve for r in ranked):
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, study_dir / "pck_curves.png", dpi=110)

    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.5 * max(len(ranked), 1)))
    y = list(range(len(ranked)))[::-1]  # the best at the top
    ax.barh([i + 0.2 for i in y], [r.best or 0.0 for r in ranked], height=0.4,
            color="tab:blue", label=f"best validation {metric}")
    ax.barh([i - 0.2 for i in y], [r.pck_bbox_02 or 0.0 for r in ranked], height=0.4,
            color="tab:orange", label="bbox PCK@0.2 (shg eval of best/)")
    ax.set_yticks(y, [r.name for r in ranked])
    ax.set(xlabel="score", title="final scores (no bar: no validated model)")
    fig.legend(fontsize=8, loc="lower center", ncol=2)
    fig.tight_layout(rect=(0, 0.6 / fig.get_figheight(), 1, 1))  # room for the legend below
    save_figure(fig, study_dir / "final_scores.png", dpi=110)
