"""What a submission queues: the stages of the pipeline (or of the AE study) with their job
callables, arguments and dependencies, and the policy that turns a `shg submit` request into
them (which stages, which inputs they need, absolute paths)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from shg.errors import UserError

from . import jobs
from .profile import Profile

SPLITS = ("train2017", "val2017")
ALL_STAGES = ("prepare", "train", "eval", "analyze")
REQUESTS = {"pipeline": ALL_STAGES, "prepare": ("prepare",), "train": ("train",),
            "eval": ("eval",), "analyze": ("analyze",), "ae": ("ae",), "study": ("study",)}


AFTER_KINDS = ("afterok", "aftercorr", "afterany")


@dataclass
class Stage:
    name: str
    fn: Callable | None
    args: list = field(default_factory=list)   # one call, or one per array task
    array: bool = False
    training: bool = False
    gpu: bool = True
    """False for CPU-only stages (shard building): no GPU is requested."""
    after: list[str] = field(default_factory=list)
    after_kind: str = "afterok"
    """How it waits for `after`: afterok (every job succeeded), aftercorr (array task i waits
    for task i of the array it follows, so one failed study variant does not stop the others),
    afterany (whatever their outcome: the study's report)."""
    fns: list[Callable] | None = None
    """One callable per array task (a study's variants), instead of `fn` for all of them."""
    labels: list[str] | None = None
    """What each array task is (the variant names), for `shg submit status`."""
    may_fail: bool = False
    """A failed task does not fail the submission (a study's variants: the report tells)."""

    def __post_init__(self) -> None:
        if self.after_kind not in AFTER_KINDS:
            raise ValueError(f"after_kind {self.after_kind!r}; valid: {', '.join(AFTER_KINDS)}")
        if self.fns is not None and len(self.fns) != len(self.args):
            raise ValueError(f"stage {self.name}: {len(self.fns)} callables, {len(self.args)} "
                             "argument tuples")

    def callables(self) -> list[Callable]:
        return list(self.fns) if self.fns is not None else [self.fn] * len(self.args)


@dataclass
class SubmitRequest:
    """One `shg submit STAGE ...`: what to queue and with which inputs."""
    stage: str
    """pipeline, prepare, train, eval, analyze, ae or study."""
    coco: str | None = None
    shards: str | None = None
    config: str | None = None
    run: str | None = None
    shard_size: int = 1000
    crop_size: int = 256
    """With prepare: the side of the crops the shards hold (a multiple of 64)."""
    ae: bool = False
    """With `pipeline`: also queue the AE study after training."""
    overrides: list[str] = field(default_factory=list)
    study: str | None = None
    """With `study`: the study file (grid and/or variants); --run is then the study's directory
    (default runs/studies/NAME) and --coco, when given, queues shard preparation first."""
    boxes: str | None = None
    """With pipeline, eval or study: a detection-results JSON; the evaluation jobs evaluate on
    its person boxes (COCO AP on a detector's boxes) instead of the shards' ground truth."""
    images: str | None = None
    """With `boxes`: the COCO root whose SPLIT/ folder holds the images (default: --coco, else
    the root of the annotation file the shards were built from)."""

    def stages_wanted(self) -> tuple[str, ...]:
        if self.stage not in REQUESTS:
            raise UserError(f"unknown stage {self.stage!r}; valid: {', '.join(REQUESTS)}")
        return REQUESTS[self.stage] + (("ae",) if self.ae and self.stage == "pipeline" else ())

    def checked(self) -> "SubmitRequest":
        """The request with absolute paths (jobs start in another directory, maybe on another
        node), after checking that every input its stages need is given."""
        which = self.stages_wanted()
        needs = {"coco": "prepare" in which, "config": bool(set(which) & {"train", "study"}),
                 "shards": bool(set(which) & {"prepare", "train", "eval", "analyze", "study"}),
                 "run": bool(set(which) & {"train", "eval", "analyze", "ae"}),
                 "study": "study" in which}
        missing = [f"--{k}" for k, needed in needs.items() if needed and not getattr(self, k)]
        if missing:
            raise UserError(f"shg submit {self.stage} needs {', '.join(missing)}")
        for option in ("config", "study", "boxes"):
            if getattr(self, option) and not Path(getattr(self, option)).is_file():
                raise UserError(f"--{option} {getattr(self, option)}: no such file")
        if self.boxes and not set(which) & {"eval", "study"}:
            raise UserError(f"--boxes is for the evaluation jobs (pipeline, eval, study), not "
                            f"shg submit {self.stage}")
        absolute = {k: str(Path(v).absolute()) if v else v
                    for k, v in (("coco", self.coco), ("shards", self.shards),
                                 ("config", self.config), ("run", self.run),
                                 ("study", self.study), ("boxes", self.boxes),
                                 ("images", self.images))}
        return SubmitRequest(**{**self.__dict__, **absolute})

    def eval_boxes(self) -> dict:
        """What the evaluation jobs add to EvalOptions for --boxes ({} without): the boxes file
        and the COCO root of the images (checked now, not when the job starts)."""
        if not self.boxes:
            return {}
        root = self.images or self.coco
        if root is None and self.shards and (Path(self.shards) / "manifest.json").is_file():
            from shards.manifest import split_entry

            ann = split_entry(self.shards, "val2017").get("source", {}).get("annotation_file")
            root = str(Path(ann).parent.parent) if ann else None
        if root is None or not (Path(root) / "val2017").is_dir():
            found = f"; {root}/val2017 is not a folder" if root else ""
            raise UserError("--boxes needs the images the boxes were detected on: give --images "
                            f"ROOT (with ROOT/val2017/){found}")
        return {"boxes": self.boxes, "coco_root": str(Path(root).absolute())}

    @property
    def build_options(self) -> dict:
        """What the prepare stage's jobs give `shg shards build` (BuildOptions fields)."""
        return {"shard_size": self.shard_size, "crop_size": self.crop_size}

    @property
    def run_name(self) -> str:
        return Path(self.run).name if self.run else "prepare"


def pipeline_stages(coco: str, shards: str, config: str, run: str, overrides: list[str],
                    profile: Profile, build: dict | None = None,
                    which: tuple[str, ...] = ALL_STAGES, boxes: dict | None = None
                    ) -> list[Stage]:
    """`build`: the prepare stage's BuildOptions fields (SubmitRequest.build_options);
    `boxes`: the evaluation's detected boxes (SubmitRequest.eval_boxes)."""
    stages: list[Stage] = []
    n = profile.prepare_tasks
    if "prepare" in which:
        stages.append(Stage("prepare", jobs.build_shards,
                            [(coco, split, shards, i, n, dict(build or {}))
                             for split in SPLITS for i in range(n)], array=True, gpu=False))
        stages.append(Stage("finalize", jobs.finalize_shards, [(shards, list(SPLITS))],
                            after=["prepare"], gpu=False))
    if "train" in which:
        train_overrides = [f"data.shards={shards}", f"run_dir={run}",
                           *profile.training_overrides(), *overrides]
        stages.append(Stage("train", jobs.TrainJob(config, train_overrides,
                                                   profile.max_requeues), [()], training=True,
                            after=["finalize"] if "prepare" in which else []))
    after_train = ["train"] if "train" in which else []
    if "eval" in which:
        stages.append(Stage("eval", jobs.evaluate,
                            [({"shards": shards, "split": "val2017", "out": f"{run}/eval",
                               "run": run, **(boxes or {})},)], after=after_train))
    if "analyze" in which:
        model = {"shards": shards, "run": run}
        stages.append(Stage("analyze", jobs.analyze,
                            [("latent", {**model, "split": "train2017",
                                         "out": f"{run}/analysis/latent"}),
                             ("skips", {**model, "split": "train2017",
                                        "out": f"{run}/analysis/skips"}),
                             ("skeletons", {"shards": shards, "split": "train2017",
                                            "out": f"{run}/analysis/skeletons"})],
                            array=True, after=after_train))
    if "ae" in which:
        stages += ae_stages(run, [o for o in overrides if not o.startswith("run_dir=")],
                            profile, after=after_train)
    return stages


def ae_stages(run: str, overrides: list[str], profile: Profile,
              after: list[str] = ()) -> list[Stage]:
    """The autoencoder study of a trained SHG run as training jobs: phase 1 (AE on the frozen
    SHG's latents), phase 2 (fine-tune both) and the baseline that continues the plain SHG for
    the same steps, then the comparison table. Each phase reads RUN/config.toml when it starts,
    so this can be queued behind the SHG's own training job."""
    from shg.studies.ae_compare import phase_overrides

    stages = []
    outs = {}
    for phase, name, deps in (("train", "ae-train", list(after)),
                              ("finetune", "ae-finetune", ["ae-train"]),
                              ("baseline", "ae-baseline", list(after))):
        out, phase_args = phase_overrides(phase, run)
        outs[phase] = out
        stages.append(Stage(name, jobs.TrainJob(f"{run}/config.toml",
                                                ["checkpoint.resume=auto", *phase_args,
                                                 *profile.training_overrides(), *overrides],
                                                profile.max_requeues), [()], training=True,
                            after=deps))
    stages.append(Stage("ae-compare", jobs.ae_compare,
                        [(run, outs["baseline"], outs["finetune"], f"{run}-ae-compare")],
                        gpu=False, after=["ae-finetune", "ae-baseline"]))
    return stages
