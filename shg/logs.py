"""One logging set-up for the toolkit's own messages (loggers "shg", "shards", "launcher"):
each line with its time and rank, information on stdout and warnings/errors on stderr (as the
prints they replace), the main rank only by default. `shg --verbose/--quiet` sets the level;
child processes (ranks, jobs) inherit it through SHG_VERBOSITY. Slurm logs then carry a
timestamp on every message. Progress bars and the CLI's own output stay prints.
"""

from __future__ import annotations

import logging
import os
import sys

LOGGERS = ("shg", "shards", "launcher")
ENV = "SHG_VERBOSITY"
FORMAT = "%(asctime)s [rank %(rank)s] %(message)s"


def process_rank() -> int:
    for name in ("RANK", "SLURM_PROCID"):
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


class _SplitStream(logging.StreamHandler):
    """INFO and below to stdout, WARNING and above to stderr, whichever sys.stdout/err are
    at the time (a test's capture, a job's redirected streams)."""

    def __init__(self):
        super().__init__(sys.stdout)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
        record.rank = process_rank()
        super().emit(record)
        self.flush()


def setup_logging(verbosity: int | None = None) -> None:
    """verbosity: -1 warnings only, 0 information (default), 1 debug; None: SHG_VERBOSITY or
    0. Ranks other than 0 say warnings only unless verbose. Idempotent: the level changes, the
    handler stays one."""
    if verbosity is None:
        value = os.environ.get(ENV, "0")
        verbosity = int(value) if value.lstrip("-").isdigit() else 0
    os.environ[ENV] = str(verbosity)
    level = {-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}[max(-1, min(1, verbosity))]
    if process_rank() != 0 and verbosity < 1:
        level = logging.WARNING
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(level)
        if not any(isinstance(h, _SplitStream) for h in logger.handlers):
            handler = _SplitStream()
            handler.setFormatter(logging.Formatter(FORMAT, "%Y-%m-%d %H:%M:%S"))
            logger.addHandler(handler)
        logger.propagate = True  # pytest's caplog and users' own handlers still see them
