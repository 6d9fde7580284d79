"""Studies: a grid of settings and/or named variants of one training config, each trained and
evaluated as its own run, compared in a leaderboard.

A study file (TOML):

    name = "thesis"                      # the study's directory and job-folder name
    description = "..."                  # optional, shown in the leaderboard
    best_by_loss = true                  # also evaluate each variant's best_by_loss/ model

    [grid]                               # every combination of these values
    "optim.lr" = [2.5e-4, 1e-3]
    "model.stacks" = [2, 4]

    [variants.baseline]                  # named variants: section.key = value overrides
    [variants.no-skips]
    model.skips = false

With both a grid and variants, every variant is crossed with every grid point. Runs live in
STUDY_DIR/VARIANT/; the leaderboard is written to STUDY_DIR/. This module reads and checks
study files and writes the leaderboard from the runs' own files; the launcher queues the jobs.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from shards import atomic

from .config import ConfigError, flatten, load_config, read_toml
from .run_status import hms

RESERVED = ("run_dir", "data.shards")
"""Keys the study sets for every variant itself."""
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
RECORD = "study.json"
EVAL_DIRS = {"best": "eval", "best_by_loss": "eval-best-by-loss"}


@dataclass
class Variant:
    name: str
    overrides: list[str]
    """`section.key=value` overrides of the study's training config (TOML values)."""


@dataclass
class Study:
    name: str
    variants: list[Variant]
    description: str = ""
    best_by_loss: bool = False
    source: str = ""


def _toml_value(value) -> str:
    import tomli_w

    return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()


def _short(key: str, keys: list[str]) -> str:
    last = key.rsplit(".", 1)[-1]
    return last if sum(k.rsplit(".", 1)[-1] == last for k in keys) == 1 else key


def _value_name(value) -> str:
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "x"


@dataclass
class StudyFile:
    """What a study file holds (checked by the config machinery: an unknown key is named with
    the valid ones, a wrong type with the expected one)."""
    name: str = ""
    """The study's directory and job-folder name (default: the file's stem)."""
    description: str = ""
    best_by_loss: bool = False
    """Also evaluate each variant's best_by_loss/ model."""
    grid: dict = field(default_factory=dict)
    """key = [values]: every combination."""
    variants: dict = field(default_factory=dict)
    """[variants.NAME] tables of section.key = value overrides."""

    def __post_init__(self) -> None:
        if self.name and not _NAME.match(self.name):
            raise ConfigError(f"name {self.name!r} must be letters, digits, '.', '_', '+', '-'")
        for table in ("grid", "variants"):
            if not isinstance(getattr(self, table), dict):
                raise ConfigError(f"{table} must be a table ([{table}])")




def load_study(path: str | Path) -> Study:
    """Read and expand a study file; errors name the file and the offending key."""
    from .config import _build

    path = Path(path)
    raw = read_toml(path, "study file")
    try:
        spec = _build(StudyFile, raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    name = spec.name or path.stem
    if not _NAME.match(name):
        raise ConfigError(f"{path}: name {name!r} must be letters, digits, '.', '_', '+', '-'")
    if "grid" not in raw and "variants" not in raw:
        raise ConfigError(f"{path}: no [grid] and no [variants.NAME]: nothing to train")

    named = [(None, [])] if "variants" not in raw else []
    for vname, table in raw.get("variants", {}).items():
        if not _NAME.match(vname):
            raise ConfigError(f"{path}: variant name {vname!r} must be letters, digits, '.', "
                              "'_', '+', '-'")
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: variants.{vname} must be a table of section.key = value")
        named.append((vname, [f"{k}={_toml_value(v)}" for k, v in flatten(table).items()]))
    if "variants" in raw and not named:
        raise ConfigError(f"{path}: [variants] holds no variant")

    grid = flatten(raw.get("grid", {}))
    if "grid" in raw and not grid:
        raise ConfigError(f"{path}: [grid] is empty; give key = [value, ...]")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: grid key {key} has no values; give {key} = [v1, v2, ...]")
    keys = list(grid)
    points = [list(zip(keys, combo)) for combo in itertools.product(*grid.values())] or [[]]

    variants = []
    for (vname, overrides), point in itertools.product(named, points):
        parts = ([vname] if vname else []) + [f"{_short(k, keys)}-{_value_name(v)}"
                                               for k, v in point]
        variants.append(Variant("_".join(parts) or "base",
                                overrides + [f"{k}={_toml_value(v)}" for k, v in point]))
    seen = set()
    for v in variants:
        if v.name in seen:
            raise ConfigError(f"{path}: two variants are named {v.name}; rename one")
        seen.add(v.name)
        for item in v.overrides:
            if item.split("=", 1)[0] in RESERVED:
                raise ConfigError(f"{path}: variant {v.name} sets {item.split('=', 1)[0]}, "
                                  "which the study sets itself (--shards, the study directory)")
    return Study(name=name, variants=variants, description=spec.description,
                 best_by_loss=spec.best_by_loss, source=str(path))


def variant_overrides(study_dir: str | Path, shards: str, variant: Variant,
                      common: list[str] = ()) -> list[str]:
    """The full override list of a variant's training run: shards and run directory, the
    submission's own overrides, then the variant's (the variant wins)."""
    return [f"data.shards={shards}", f"run_dir={Path(study_dir) / variant.name}", *common,
            *variant.overrides]


def check_variants(study: Study, config: str, overrides_of) -> None:
    """Load every variant's config as its training job will, so an unknown key or a bad value
    stops the submission with the variant named instead of failing one job later."""
    for v in study.variants:
        try:
            load_config(config, overrides_of(v))
        except ConfigError as exc:
            raise ConfigError(f"{study.source}: variant {v.name}: {exc}") from None


# ----------------------------------------------------------------------------- run states
def training_finished(run: str | Path) -> bool:
    """True when the run's training ended normally (not stopped by a signal): its trainer wrote
    summary.json."""
    path = Path(run) / "summary.json"
    try:
        return bool(json.loads(path.read_text()).get("finished"))
    except (OSError, ValueError):
        return False


def variant_finished(run: str | Path, best_by_loss: bool) -> bool:
    """Trained and evaluated (each kept model the study evaluates): re-submission skips it."""
    wanted = ["best", "best_by_loss"] if best_by_loss else ["best"]
    return training_finished(run) and all(
        (Path(run) / EVAL_DIRS[w] / "summary.json").is_file() for w in wanted)


def write_record(study_dir: Path, study: Study, config: str, shards: str,
                 job_folder: str | None, common: list[str], boxes: str | None = None) -> dict:
    """`boxes`: the detection-results file the variants are evaluated on (None: the shards'
    ground-truth boxes)."""
    record = {"study": study.name, "description": study.description, "source": study.source,
              "config": config, "shards": shards, "boxes": boxes,
              "best_by_loss": study.best_by_loss,
              "job_folder": job_folder, "overrides": list(common),
              "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "variants": [{**asdict(v), "run": str(Path(study_dir) / v.name)}
                           for v in study.variants]}
    study_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_json(study_dir / RECORD, record, indent=1)
    return record


def read_record(study_dir: str | Path) -> dict:
    path = Path(study_dir) / RECORD
    if not path.is_file():
        raise ConfigError(f"{path}: not found; give the study directory `shg submit study` "
                          "printed (it holds study.json)")
    return json.loads(path.read_text())


# ----------------------------------------------------------------------------- leaderboard
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
    from .training.metrics_log import read_metrics

    run = Path(entry["run"])
    result = VariantResult(entry["name"], entry["overrides"], state, why)
    try:
        cfg = load_config(run / "config.toml") if (run / "config.toml").is_file() else None
    except ConfigError:
        cfg = None
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
    atomic.write_json(study_dir / "leaderboard.json", board, indent=1)
    by_loss = record.get("best_by_loss")
    lines = [f"# Study {record['study']}", ""]
    if record.get("description"):
        lines += [record["description"], ""]
    crowd = any(getattr(r, k.lower()) is not None for r in ranked for k in CROWD_KEYS)
    boxes = record.get("boxes")
    on = (f"the person boxes of `{boxes}` (COCO AP on detections)" if boxes
          else "the ground-truth boxes of the shards")
    lines += [f"Evaluated on: {on}.", "",
              f"Best variant: **{board['best_variant']}**" if done else
              "No variant has a validated model yet.", "",
              "| rank | variant | overrides | best " + (done[0].selection_metric if done else "")
              + " | step | bbox PCK@0.2 | COCO AP |"
              + (" AP(E) | AP(M) | AP(H) |" if crowd else "")
              + " steps | train time | state |"
              + (" bbox PCK@0.2 by loss | COCO AP by loss |" if by_loss else ""),
              "|---:|---|---|---:|---:|---:|---:|" + ("---:|" * 3 if crowd else "")
              + "---:|---:|---|" + ("---:|---:|" if by_loss else "")]
    for i, r in enumerate(ranked, 1):
        row = (f"| {i} | {r.name} | {' '.join(f'`{o}`' for o in r.overrides) or '(config)'} | "
               f"{_fmt(r.best)} | {_fmt(r.best_step)} | {_fmt(r.pck_bbox_02)} | "
               f"{_fmt(r.coco_ap)} | "
               + "".join(f"{_fmt(getattr(r, k.lower()))} | " for k in CROWD_KEYS if crowd)
               + f"{_fmt(r.steps)} | {hms(r.train_seconds)} | {r.state} |")
        if by_loss:
            row += f" {_fmt(r.by_loss.get('pck_bbox_02'))} | {_fmt(r.by_loss.get('coco_ap'))} |"
        lines.append(row)
    if by_loss:
        lines += ["", "*by loss*: the same variant's model kept by the lowest validation loss "
                      "(best_by_loss/) instead of the best selection metric (best/)."]
    if unfinished:
        lines += ["", "## Not finished", ""]
        lines += [f"- **{r.name}**: {r.state}" + (f": {r.why}" if r.why else "")
                  for r in unfinished]
    lines += ["", "![validation curves](pck_curves.png)", "", "![final scores](final_scores.png)",
              ""]
    atomic.write_text(study_dir / "leaderboard.md", "\n".join(lines))
    _plots(study_dir, ranked)
    return board


def _plots(study_dir: Path, ranked: list[VariantResult]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    with atomic.atomic_path(study_dir / "pck_curves.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)

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
    with atomic.atomic_path(study_dir / "final_scores.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
