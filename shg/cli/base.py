"""How a command module declares its commands: a subcommand's arguments and its handler (a
function of the parsed arguments returning the exit status), or a group of subcommands."""

from __future__ import annotations

import argparse
from collections.abc import Callable

Handler = Callable[[argparse.Namespace], int]


def add_command(sub, name: str, help: str, arguments: Callable[[argparse.ArgumentParser], None],
                handler: Handler, **defaults) -> argparse.ArgumentParser:
    """`shg ... NAME`: its arguments, and the handler main() calls with them."""
    p = sub.add_parser(name, help=help)
    arguments(p)
    p.set_defaults(func=handler, **defaults)
    return p


def add_group(sub, name: str, help: str, dest: str, metavar: str):
    """`shg NAME ACTION ...`: the subparsers its actions are added to."""
    return sub.add_parser(name, help=help).add_subparsers(dest=dest, metavar=metavar,
                                                          required=True)
