"""The README tells the truth: its Python lines run, every test it cites exists, every
command of its table parses, every config key of its reference exists with the default it
states. (The ONNX section's decoding lines run in test_onnx.py against a real export.)"""

import ast
import json
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, re.S)


def test_the_model_lines_run_as_written():
    (block,) = [b for b in _python_blocks() if "StackedHourglass(" in b]
    scope: dict = {}
    exec(block, scope)
    model = scope["model"]
    assert type(model).__name__ == "StackedHourglass" and model.stacks == 8
    from shg.models import count_parameters

    assert count_parameters(model) == 25_437_960  # the figure the README gives


def test_every_cited_test_exists():
    cited = set(re.findall(r"(test_\w+\.py)::(test_\w+)", README))
    assert cited
    for module, name in sorted(cited):
        tree = ast.parse((REPO / "tests" / module).read_text())
        names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert name in names, f"README cites {module}::{name}, which does not exist"


def _table_commands() -> list[str]:
    section = README.split("## Command line", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `(shg [^`]+)` \|", section, re.M)


def test_every_command_and_option_of_the_table_exists(capsys):
    from shg.cli import build_parser

    commands = _table_commands()
    assert len(commands) >= 20
    for text in commands:
        words = [w.strip("[]") for w in shlex.split(text.replace("\\|", "|"))[1:]]
        command = []
        for w in words:  # the subcommand words, before the first option or argument
            if w.startswith("-") or w.isupper() or "=" in w or "/" in w or "." in w:
                break
            command.append(w.split("|")[0])  # a|b: the first of the alternatives
        helps = []
        for alternative in ([*command[:-1], c] for c in words[len(command) - 1].split("|")):
            with pytest.raises(SystemExit) as done:
                if alternative == ["demo"]:  # `shg demo` hands everything to the recipe
                    from shg.demo import main as demo

                    demo(["--help"])
                build_parser().parse_args([*alternative, "--help"])
            assert done.value.code == 0, text
            helps.append(capsys.readouterr().out)
        # a row of alternatives (submit pipeline|prepare|...) lists the options of them all
        for option in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", text):
            assert any(option in shown for shown in helps), f"{text}: no {option}"


def test_every_config_key_of_the_reference_exists_with_its_default():
    from shg.config import RunConfig, to_dict

    section = README.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (`[^|]+`) \| ([^|]*) \|", section, re.M)
    defaults = to_dict(RunConfig())
    checked = compared = 0
    for keys, stated in rows:
        names = re.findall(r"`([\w.]+)`", keys)
        values = [stated.strip()]
        if len(names) > 1:  # "`a`, `b` | 1, 2" or "`a` / `b` | 1 / 2"
            values = [v.strip() for v in re.split(r",(?![^\[]*\])| / ", stated)]
        for i, name in enumerate(names):
            node = defaults
            for part in name.split("."):
                assert part in node, f"README's config table names {name}, which does not exist"
                node = node[part]
            checked += 1
            if len(values) == len(names) and values[i] not in ("—", ""):
                compared += 1
                assert _same(values[i], node), f"{name}: README says {values[i]}, code has {node}"
    assert checked >= 40 and compared >= 35


def _same(text: str, value) -> bool:
    text = text.strip("`")
    if isinstance(value, bool):
        return text == str(value).lower()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        match = re.match(r"^-?[\d.e+-]+", text)
        return bool(match) and float(match.group(0)) == float(value)
    if isinstance(value, list):  # as TOML writes it (strings in double quotes) or as Python
        return text.replace(" ", "") in (str(value).replace(" ", ""),
                                         json.dumps(value).replace(" ", ""))
    return text.strip('"') == str(value)
