"""The study's leaderboard from its runs and its jobs' states: `shg study report STUDY_DIR` and
the study's last job (kept apart from the stages so that the job module can import it)."""

from __future__ import annotations

from pathlib import Path

from shg.studies.leaderboard import variant_result, write_leaderboard
from shg.studies.records import EVAL_DIRS, read_record, training_finished, variant_finished

OK_STATES = ("COMPLETED",)
WAITING = ("PENDING", "REQUEUED", "CONFIGURING", "RESIZING", "SUSPENDED")


def variant_state(entry: dict, train: dict | None, evaluation: dict | None,
                  best_by_loss: bool) -> tuple[str, str]:
    """(state, why) of one variant from its run directory and its latest jobs' rows."""
    run = entry["run"]
    if variant_finished(run, best_by_loss):
        return "finished", ""
    if train is None:
        return ("trained, not evaluated", "") if training_finished(run) else \
            ("not submitted", "")
    for stage, row in (("train", train), ("eval", evaluation)):
        if row is None:
            continue
        state = row["state"]
        if state in WAITING:
            return f"{stage} pending", row.get("why", "")
        if state == "RUNNING":
            return f"{stage} running", ""
        if state not in OK_STATES:
            return f"failed ({stage} {state})", row.get("why", "")
    if not training_finished(run):
        return "failed (train)", "the training job ended without finishing (no summary.json)"
    missing = [d for w, d in EVAL_DIRS.items() if w == "best" or best_by_loss]
    return "failed (eval)", f"no {' or '.join(missing)}/summary.json"


def report(study_dir: str | Path, log=print) -> dict:
    """Rebuild STUDY_DIR/leaderboard.{md,json} and its plots from the runs and the jobs' states
    (`shg study report`, and the study's last job)."""
    study_dir = Path(study_dir)
    record = read_record(study_dir)
    rows: dict[tuple[str, str], dict] = {}
    folder = record.get("job_folder")
    if folder and (Path(folder) / "pipeline.json").is_file():
        from .status import status

        for row in status(folder, log=lambda *a: None):
            if row.get("variant"):
                rows[(row["stage"], row["variant"])] = row
    results = []
    for entry in record["variants"]:
        state, why = variant_state(entry, rows.get(("train", entry["name"])),
                                   rows.get(("eval", entry["name"])), record["best_by_loss"])
        results.append(variant_result(entry, state, why, record["best_by_loss"]))
    board = write_leaderboard(study_dir, results, record)
    finished = sum(r.state == "finished" for r in results)
    log(f"study {record['study']}: {finished} of {len(results)} variants finished; "
        f"best: {board['best_variant'] or 'none yet'}")
    for r in results:
        if r.state != "finished":
            log(f"  {r.name}: {r.state}" + (f": {r.why}" if r.why else ""))
    log(f"leaderboard: {study_dir / 'leaderboard.md'}")
    return board

