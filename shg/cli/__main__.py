"""`python -m shg.cli ARGS`: the `shg` command."""

from . import run

run()
