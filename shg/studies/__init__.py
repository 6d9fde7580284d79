"""Studies: several training runs of one config compared, each trained and evaluated as its own
run.

    spec.py        a study file (TOML): its grid and named variants, checked and expanded
    records.py     the study's record (study.json) and what a run's directory says: finished
                   training and evaluations, its resolved config
    leaderboard.py the variants ranked: leaderboard.{md,json} and plots
    ae_compare.py  the bottleneck-autoencoder study: its two phases and the comparison with
                   longer training (`shg ae ...`)
    tables.py      the markdown/JSON result files both comparisons write

Queuing a study's jobs on Slurm (and the report job) is launcher/study.py's and
launcher/study_report.py's.
"""

from .leaderboard import VariantResult, variant_result, write_leaderboard
from .records import (EVAL_DIRS, read_record, run_config, training_finished, variant_finished,
                      write_record)
from .spec import Study, Variant, check_variants, load_study, variant_overrides

__all__ = ["VariantResult", "variant_result", "write_leaderboard",
           "EVAL_DIRS", "read_record", "run_config", "training_finished", "variant_finished",
           "write_record",
           "Study", "Variant", "check_variants", "load_study", "variant_overrides"]
