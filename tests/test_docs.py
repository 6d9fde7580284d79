"""The README and docs/ tell the truth (docs/contributing.md, "The documentation and its tests").

- Every command block is checked, unless the line before it says `<!-- not run: WHY -->`: each
  `shg` line is parsed by the real parser (lines ending in --help are run), `make` lines name
  Makefile targets, `python` lines scripts or modules that exist (and options the script has),
  `torchrun`/`accelerate launch` lines a module that exists. Python blocks run as written (or
  say `<!-- run by tests/test_x.py -->`, a test that reads the page); TOML blocks load as the
  study, schema or profile file they show.
- Every `shg ...` command and `--option` named anywhere (inline code too) exists, as do the
  repository paths, dotted names and tests (`test_x.py::test_y`) the pages cite.
- The README's command table holds every command of the parser; every option of every command
  is named in the docs; the configuration and profile references hold every key with its
  default; every relative link and #anchor resolves; the README stays under 16 KB.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import importlib
import importlib.util
import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md")), REPO / "tests" / "README.md"]
CONFIG_REFERENCE = REPO / "docs" / "configuration.md"
LAYOUT = REPO / "docs" / "contributing.md", "## Layout"
PROFILE_REFERENCE = REPO / "docs" / "slurm.md", "## Profiles"
README_LIMIT = 16 * 1024

SHELL = {"bash", "sh", "console", "shell"}
MARKER = re.compile(r"^<!--\s*(not run|run by)\s*:?\s*(.*?)\s*-->$")
# options of other programs that the docs name in inline code, and whose they are
FOREIGN_OPTIONS = {
    "--bbox-thr": "mmpose's top-down demos",
    "--run-path": "torchrun",
    "--dependency": "sbatch", "--kill-on-invalid-dep": "sbatch",
    "--dist": "pytest-xdist", "--strict-markers": "pytest",
    "--cpus-per-task": "sbatch", "--host": "mlflow server", "--allowed-hosts": "mlflow server",
}
PLACEHOLDERS = {"X", "Y", "N", "NAME", "ID"}  # slurm/profiles/X.toml, tests/test_X.py
FOREIGN_PATHS = {"configs/_base_/datasets/aic.py": "mmpose's"}
GLOBAL_OPTIONS = {"-h", "--help", "-v", "--verbose", "-q", "--quiet"}


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


# ----------------------------------------------------------------------------- the pages
@dataclasses.dataclass
class Block:
    page: Path
    line: int          # 1-based line of the opening fence
    info: str          # the fence's info string: bash, python, toml, ...
    text: str
    marker: tuple[str, str] | None  # ("not run", why) / ("run by", test file)

    @property
    def where(self) -> str:
        return f"{rel(self.page)}:{self.line}"


FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)[^`]*$")


@functools.cache
def parsed(page: Path) -> tuple[list[Block], str]:
    """The page's fenced blocks, and its text with the blocks blanked out (prose only)."""
    lines = page.read_text().splitlines()
    blocks, prose, i = [], [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            prose.append(lines[i])
            i += 1
            continue
        indent, fence, info = m.group(1), m.group(2), m.group(3)
        before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(before)
        body, j = [], i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j])
            j += 1
        blocks.append(Block(page, i + 1, info.lower(), "\n".join(body) + "\n",
                            (marker.group(1), marker.group(2)) if marker else None))
        prose.extend([""] * (j + 1 - i))
        i = j + 1
    return blocks, "\n".join(prose)


def all_blocks() -> list[Block]:
    return [b for page in PAGES for b in parsed(page)[0]]


def inline_spans(page: Path) -> list[str]:
    """Inline code of the prose (tables included), whitespace normalised."""
    text = parsed(page)[1]
    spans = re.findall(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", text, re.S)
    return [" ".join(s.split()) for _, s in spans]


def shell_lines(block: Block) -> list[str]:
    """The commands of a shell block: continuations joined, comments and prompts dropped."""
    out, current = [], ""
    for raw in block.text.splitlines():
        line = raw.strip()
        if block.info == "console" and line.startswith("$ "):
            line = line[2:]
        if not current and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        out.append(current + line)
        current = ""
    return out + ([current] if current.strip() else [])


def is_shell(block: Block) -> bool:
    return block.info in SHELL


# ----------------------------------------------------------------------------- the parser
@dataclasses.dataclass
class Command:
    path: tuple[str, ...]
    parser: argparse.ArgumentParser
    children: dict[str, "Command"]
    actions: list[list[str]]  # each optional action's option strings

    @property
    def options(self) -> set[str]:
        return {o for a in self.actions for o in a}

    def leaves(self):
        if not self.children:
            yield self
        for child in self.children.values():
            yield from child.leaves()


def _command(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Command:
    children = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                children[name] = _command(sub, (*path, name))
    actions = [list(a.option_strings) for a in parser._actions if a.option_strings]
    return Command(path, parser, children, actions)


def demo_parser() -> argparse.ArgumentParser:
    """`shg demo` hands its arguments to the recipe's own parser."""
    from shg.demo import add_arguments

    parser = argparse.ArgumentParser(prog="shg demo")
    add_arguments(parser)
    return parser


@functools.cache
def commands() -> Command:
    from shg.cli import build_parser

    root = _command(build_parser())
    root.children["demo"] = _command(demo_parser(), ("demo",))
    return root


def all_options() -> set[str]:
    return {o for c in commands().leaves() for o in c.options} | commands().options


def _placeholder(word: str) -> bool:
    return not re.fullmatch(r"[a-z][a-z0-9_-]*([|/][a-z][a-z0-9_-]*)*", word)


def resolve(words: list[str]) -> tuple[list[Command], list[str], int]:
    """The commands a `shg` word list names (several for a|b alternatives), the problems, and
    how many words were command names."""
    problems, nodes, i = [], [commands()], 0
    while i < len(words) and words[i].startswith("-"):  # -v, --quiet, -v|--verbose
        i += 1
    while i < len(words) and all(n.children for n in nodes) and not _placeholder(words[i]):
        found = []
        for node in nodes:
            for name in re.split(r"[|/]", words[i]):
                if name in node.children:
                    found.append(node.children[name])
                else:
                    problems.append(f"`shg {' '.join((*node.path, name))}` is not a command")
        if not found:
            return nodes, problems, i
        nodes, i = found, i + 1
    return nodes, problems, i


OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def shg_problems(text: str) -> list[str]:
    """`shg ...` as the docs write it (brackets, a|b, placeholders): its commands and options
    exist. Options are looked up in every command the words may name (with a placeholder such
    as `shg submit ...`, every command below `submit`)."""
    words = text.replace("\\|", "|").split()[1:]
    nodes, problems, _ = resolve(words)
    known = GLOBAL_OPTIONS | {o for n in nodes for leaf in n.leaves() for o in leaf.options}
    for option in OPTION.findall(text.replace("\\|", "|")):
        if option.startswith("--") or option in ("-v", "-q", "-h"):
            for name in re.split(r"[|/=]", option)[:1]:
                if name not in known:
                    problems.append(f"`{text}`: no option {name} in "
                                    + ", ".join("shg " + " ".join(n.path) for n in nodes))
    return problems


def mentioned_options(text: str) -> dict[tuple[str, ...], set[str]]:
    """For coverage: the options a `shg ...` span names, per command it names."""
    words = text.replace("\\|", "|").split()[1:]
    nodes, _, _ = resolve(words)
    found = {}
    for node in nodes:
        for leaf in node.leaves():
            found[leaf.path] = {o for o in OPTION.findall(text.replace("\\|", "|"))
                                if o in leaf.options}
    return found


# ----------------------------------------------------------------------------- other commands
@functools.cache
def make_targets() -> set[str]:
    return set(re.findall(r"^([\w.-]+)\s*:(?!=)", (REPO / "Makefile").read_text(), re.M))


def module_problems(name: str) -> list[str]:
    try:
        found = importlib.util.find_spec(name)
    except ModuleNotFoundError:
        found = None
    return [] if found else [f"no module {name}"]


def script_problems(script: str, args: list[str]) -> list[str]:
    path = REPO / script
    if not path.is_file():
        return [f"no script {script}"]
    source = path.read_text()
    return [f"{script} has no option {o}" for o in args
            if o.startswith("--") and f'"{o.split("=")[0]}"' not in source]


def code_problems(code: str) -> list[str]:
    """`python -c CODE`: it compiles, and what it imports exists."""
    problems = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.ImportFrom) and node.module:
            problems += module_problems(node.module)
            if not problems:
                module = importlib.import_module(node.module)
                problems += [f"{node.module} has no {a.name}" for a in node.names
                             if not hasattr(module, a.name)
                             and not (hasattr(module, "__path__") and module_problems(
                                 f"{node.module}.{a.name}") == [])]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                problems += module_problems(alias.name)
    return problems


def python_problems(argv: list[str]) -> list[str]:
    args = argv[1:]
    if args[:1] == ["-m"]:
        problems = module_problems(args[1])
        if args[1] == "pytest":
            problems += [f"no {a}" for a in args[2:]
                         if not a.startswith("-") and "/" in a
                         and not (REPO / a.split("::")[0]).exists()]
        return problems
    if args[:1] == ["-c"]:
        return code_problems(args[1])
    return script_problems(args[0], args[1:]) if args else ["python without a script"]


def launcher_problems(argv: list[str]) -> list[str]:
    """torchrun / accelerate launch: the module they start exists."""
    if "-m" not in argv:
        return [f"`{' '.join(argv)}`: no -m MODULE"]
    return module_problems(argv[argv.index("-m") + 1])


def strict_problems(line: str, capsys) -> list[str]:
    """A line of a checked block: parsed by what would run it."""
    argv = shlex.split(line, comments=True)
    while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", argv[0]):
        argv = argv[1:]  # VAR=value before the command
    if not argv:
        return []
    prog = argv[0]
    if prog in ("shg", ".venv/bin/shg"):
        from shg.cli import build_parser, main

        try:
            if argv[-1] in ("--help", "-h"):
                with pytest.raises(SystemExit) as done:
                    main(argv[1:])
                code = done.value.code
            elif argv[1:2] == ["demo"]:
                demo_parser().parse_args(argv[2:])
                code = 0
            else:
                build_parser().parse_args(argv[1:])
                code = 0
        except SystemExit as exc:
            code = exc.code
        error = capsys.readouterr().err.strip().splitlines()
        return [] if code == 0 else [f"`{line}`: {error[-1] if error else code}"]
    if prog == "make":
        return [f"`{line}`: no make target {t}" for t in argv[1:]
                if "=" not in t and not t.startswith("-") and t not in make_targets()]
    if re.fullmatch(r"(\.venv/bin/)?python3?", prog):
        return [f"`{line}`: {p}" for p in python_problems(argv)]
    if prog == "torchrun" or argv[:2] == ["accelerate", "launch"]:
        return [f"`{line}`: {p}" for p in launcher_problems(argv)]
    return [f"`{line}`: {prog} is not checked: mark the block <!-- not run: WHY -->"]


def span_problems(text: str) -> list[str]:
    """Anything the docs name in code, leniently: placeholders, brackets, ... allowed."""
    words = text.replace("\\|", "|").split()
    if not words:
        return []
    first = words[0]
    if first in ("shg", ".venv/bin/shg"):
        return shg_problems(text)
    if re.fullmatch(r"(\.venv/bin/)?python3?", first) and len(words) > 1:
        if words[1] == "-c":
            return []  # in a block: checked as code there
        argv = [w.strip("[]") for w in words]
        return [f"`{text}`: {p}" for p in python_problems(argv)] if "..." not in words else []
    if re.fullmatch(r"bench/\w+\.py", first):
        return [f"`{text}`: {p}" for p in script_problems(first, [w.strip("[]") for w in words])]
    if first == "make":
        return [f"`{text}`: no make target {t}" for t in words[1:2]
                if "=" not in t and t not in make_targets()]
    if first.startswith("--"):
        known = all_options() | set(FOREIGN_OPTIONS)
        return [f"`{text}`: no option {name} in any command"
                for option in OPTION.findall(text) if option.startswith("--")
                for name in re.split(r"[/|=]", option)[:1] if name not in known]
    return []


PATH = re.compile(r"(?:^|\s)((?:shg|shards|launcher|tests|bench|configs|slurm|docs|\.ci)/"
                  r"[\w./-]*)")


def path_problems(text: str) -> list[str]:
    problems = []
    for path in PATH.findall(text):
        parts = path.split("::")[0].rstrip(".").split("/")
        if path in FOREIGN_PATHS or any(w in PLACEHOLDERS for p in parts
                                        for w in re.split(r"[_.-]", p)):
            continue  # slurm/profiles/X.toml, tests/test_X.py: placeholders
        if not (REPO / "/".join(parts)).exists():
            problems.append(f"no file {path}")
    return problems


DOTTED = re.compile(r"^((?:shg|shards|launcher)(?:\.[A-Za-z_]\w*)+)")


def dotted_problems(text: str) -> list[str]:
    m = DOTTED.match(text)
    if not m:
        return []
    parts = m.group(1).split(".")
    for k in range(len(parts), 0, -1):
        name = ".".join(parts[:k])
        try:
            if importlib.util.find_spec(name) is None:
                continue
        except ModuleNotFoundError:
            continue
        obj = importlib.import_module(name)
        for attr in parts[k:]:
            if not hasattr(obj, attr):
                return [f"{m.group(1)}: {name} has no {attr}"]
            obj = getattr(obj, attr)
        return []
    return [f"no module {parts[0]}"]


# ----------------------------------------------------------------------------- the tests
def test_readme_is_short():
    size = README.stat().st_size
    assert size <= README_LIMIT, f"README.md is {size} bytes: move the detail to docs/"


def test_every_marker_says_why():
    for block in all_blocks():
        if block.marker:
            kind, why = block.marker
            assert why, f"{block.where}: <!-- {kind}: ... --> says no reason"


def test_every_command_block_is_checked_or_marked_not_run(capsys):
    checked, problems = 0, []
    for block in all_blocks():
        if not block.info:
            assert not re.search(r"^\s*(\$ )?shg ", block.text, re.M), \
                f"{block.where}: a block of commands without a language: tag it ```bash"
        if not is_shell(block) or block.marker:
            continue
        for line in shell_lines(block):
            checked += 1
            problems += [f"{block.where}: {p}" for p in strict_problems(line, capsys)]
    assert not problems, "\n".join(problems)
    assert checked >= 30


def test_every_command_and_option_the_docs_name_exists():
    problems, spans = [], 0
    for page in PAGES:
        for span in inline_spans(page):
            spans += 1
            problems += [f"{rel(page)}: {p}" for p in span_problems(span)]
    for block in all_blocks():
        if is_shell(block):
            for line in shell_lines(block):
                problems += [f"{block.where}: {p}" for p in span_problems(line.split(" #")[0])]
    assert not problems, "\n".join(problems)
    assert spans > 500


def test_every_path_and_dotted_name_the_docs_name_exists():
    problems = []
    for page in PAGES:
        for span in inline_spans(page):
            problems += [f"{rel(page)}: {p}" for p in path_problems(span) + dotted_problems(span)]
    for block in all_blocks():
        if is_shell(block):
            problems += [f"{block.where}: {p}" for p in path_problems(block.text)]
    assert not problems, "\n".join(problems)


def test_every_cited_test_exists():
    cited = {(m, t, rel(page)) for page in PAGES
             for m, t in re.findall(r"(test_[a-z0-9_]+\.py)::(test_[a-z0-9_]+)", page.read_text())}
    assert len(cited) >= 12
    for module, name, page in sorted(cited):
        files = sorted((REPO / "tests").rglob(module))
        assert files, f"{page} cites {module}, which is not under tests/"
        names = {n.name for f in files for n in ast.walk(ast.parse(f.read_text()))
                 if isinstance(n, ast.FunctionDef)}
        assert name in names, f"{page} cites {module}::{name}, which does not exist"


def _readme_commands() -> list[str]:
    section = README.read_text().split("\n## Commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `(shg [^`]+)` \|", section, re.M)


def test_the_readme_command_table_holds_every_command():
    rows = _readme_commands()
    named = set()
    for row in rows:
        nodes, problems, _ = resolve(row.replace("\\|", "|").split()[1:])
        assert not problems, problems
        named |= {leaf.path for n in nodes for leaf in n.leaves()}
    every = {leaf.path for leaf in commands().leaves()}
    missing = sorted(" ".join(p) for p in every - named)
    assert not missing, f"README's command table lacks: shg {', shg '.join(missing)}"


def test_every_option_of_every_command_is_named_in_the_docs():
    named: dict[tuple[str, ...], set[str]] = {}
    spans = [s for page in PAGES for s in inline_spans(page)]
    spans += [line for b in all_blocks() if is_shell(b) for line in shell_lines(b)]
    for span in spans:
        if span.split()[:1] in (["shg"], [".venv/bin/shg"]):
            for path, options in mentioned_options(span).items():
                named.setdefault(path, set()).update(options)
    missing = []
    for leaf in commands().leaves():
        for action in leaf.actions:
            if set(action) & {"-h", "--help"}:
                continue
            if not set(action) & named.get(leaf.path, set()):
                missing.append(f"shg {' '.join(leaf.path)} {action[-1]}")
    assert not missing, "options no page names with their command:\n" + "\n".join(missing)


def _exec(block: Block) -> dict:
    scope: dict = {"__name__": "docs"}
    exec(compile(block.text, block.where, "exec"), scope)
    return scope


def test_every_python_block_runs_or_says_which_test_runs_it():
    ran, problems = 0, []
    for block in all_blocks():
        if block.info != "python":
            continue
        if block.marker is None:
            scope = _exec(block)
            ran += 1
            if "StackedHourglass(" in block.text:
                from shg.models import count_parameters

                model = scope["model"]
                assert type(model).__name__ == "StackedHourglass" and model.stacks == 8
                assert count_parameters(model) == 25_437_960  # the figure the docs give
        elif block.marker[0] == "run by":
            test = block.marker[1].split("::")[0]
            files = sorted((REPO / "tests").rglob(Path(test).name))
            if not any(block.page.name in f.read_text() for f in files):
                problems.append(f"{block.where}: {test} does not exist or does not read "
                                f"{rel(block.page)}")
    assert not problems, "\n".join(problems)
    assert ran >= 1


def _load_study(path: Path):
    for name in ("shg.study", "shg.studies", "shg.studies.study"):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError:
            continue
        if hasattr(module, "load_study"):
            return module.load_study(path)
    raise AssertionError("no load_study in shg.study or shg.studies: update tests/test_docs.py")


def test_every_toml_block_loads_as_what_it_shows(tmp_path):
    from launcher.profile import Profile
    from shards.schema import apply_schema_file, from_category

    profile_keys = {f.name for f in dataclasses.fields(Profile)}
    loaded = 0
    for i, block in enumerate(all_blocks()):
        if block.info != "toml" or block.marker:
            continue
        data = tomllib.loads(block.text)
        path = tmp_path / f"block{i}.toml"
        path.write_text(block.text)
        if "grid" in data or "variants" in data:
            from shg.config import load_config

            study = _load_study(path)
            assert study.variants, block.where
            for variant in study.variants:  # as `shg submit study` checks them
                load_config("configs/tiny.toml", variant.overrides)
        elif "flip_pairs" in data or "sigmas" in data:
            names = data.get("names") or sorted({j for pair in data["flip_pairs"] for j in pair})
            schema = apply_schema_file(from_category({"name": "doc", "keypoints": names},
                                                     block.where), path)
            assert schema.sigmas and len(schema.sigmas) == len(names), block.where
        elif set(data) <= profile_keys:
            Profile(**data)
        else:
            raise AssertionError(f"{block.where}: a TOML block that is no study, schema or "
                                 "profile file: mark it <!-- not run: WHY -->")
        loaded += 1
    assert loaded >= 3


def test_every_file_the_layout_names_exists():
    """The layout list: `dir/` at the margin, its entries indented under it, and the files an
    entry's description names (`hourglass.py` under `models/`; `docs/x.md` from the root)."""
    page, heading = LAYOUT
    start = page.read_text().splitlines().index(heading) + 1
    (block,) = [b for b in parsed(page)[0] if b.line > start][:1]
    problems, top, entry, named = [], None, None, 0
    for line in block.text.splitlines():
        name, _, description = line.strip().partition(" ")
        if not line.startswith(" "):
            top, entry = REPO / name, REPO / name
        elif not line.startswith("   ") and name:
            entry = top / name
        else:
            description = line
        if not line.startswith("   ") and name:
            named += 1
            if not entry.exists():
                problems.append(f"no {rel(entry)}")
        for file in re.findall(r"(?<![\w/.-])([\w/.-]+\.(?:py|sh|sbatch|md))\b", description):
            path = REPO / file if "/" in file else entry / file
            if not path.exists():
                problems.append(f"{rel(entry)}: no {file}")
    assert not problems, "the layout in docs/contributing.md is stale:\n" + "\n".join(problems)
    assert named >= 30


# ----------------------------------------------------------------------------- references
def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _check_reference(text: str, defaults: dict, what: str) -> tuple[int, int]:
    """Rows `| `key`[, `key2`] | default[, default2] | meaning |`: every key exists with the
    default stated, and every key of the code has a row."""
    rows = re.findall(r"^\| (`[^|]+`) \| ([^|]*) \|", text, re.M)
    checked = compared = 0
    seen = set()
    for keys, stated in rows:
        names = re.findall(r"`([\w.]+)`", keys)
        values = [stated.strip()]
        if len(names) > 1:  # "`a`, `b` | 1, 2" or "`a` / `b` | 1 / 2"
            values = [v.strip() for v in re.split(r",(?![^\[]*\])| / ", stated)]
        for i, name in enumerate(names):
            assert name in defaults, f"{what} names {name}, which does not exist"
            seen.add(name)
            checked += 1
            if len(values) == len(names) and values[i] not in ("—", ""):
                compared += 1
                assert _same(values[i], defaults[name]), \
                    f"{what}: {name} is {values[i]} there, {defaults[name]!r} in the code"
    missing = sorted(set(defaults) - seen)
    assert not missing, f"{what} lacks {', '.join(missing)}"
    return checked, compared


def test_every_config_key_is_in_the_reference_with_its_default():
    from shg.config import RunConfig, to_dict

    checked, compared = _check_reference(CONFIG_REFERENCE.read_text(),
                                         _flat(to_dict(RunConfig())), rel(CONFIG_REFERENCE))
    assert checked >= 60 and compared >= 50


def test_every_profile_key_is_in_the_reference_with_its_default():
    from launcher.profile import Profile

    page, heading = PROFILE_REFERENCE
    section = page.read_text().split(heading + "\n", 1)[1].split("\n## ", 1)[0]
    checked, compared = _check_reference(section, dataclasses.asdict(Profile()), rel(page))
    assert checked >= 15 and compared >= 15


def _same(text: str, value) -> bool:
    text = text.strip("`")
    if isinstance(value, bool):
        return text == str(value).lower()
    if isinstance(value, (int, float)):
        match = re.match(r"^-?[\d.e+-]+", text)
        return bool(match) and float(match.group(0)) == float(value)
    if isinstance(value, list):  # as TOML writes it (strings in double quotes) or as Python
        return text.replace(" ", "") in (str(value).replace(" ", ""),
                                         json.dumps(value).replace(" ", ""))
    return text.strip('"') == str(value)


# ----------------------------------------------------------------------------- links
def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@functools.cache
def anchors(page: Path) -> set[str]:
    found, seen = set(), {}
    for heading in re.findall(r"^#{1,6} (.+)$", parsed(page)[1], re.M):
        base = slug(heading)
        n = seen.get(base, 0)
        found.add(base if n == 0 else f"{base}-{n}")
        seen[base] = n + 1
    return found


def test_every_relative_link_and_anchor_resolves():
    problems, links = [], 0
    for page in PAGES:
        prose = re.sub(r"(`+).+?\1", "", parsed(page)[1], flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", prose):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            links += 1
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            if not path.exists():
                problems.append(f"{rel(page)}: link to {target}: no such file")
            elif anchor and path.suffix == ".md" and anchor not in anchors(path):
                problems.append(f"{rel(page)}: link to {target}: no such heading")
    assert not problems, "\n".join(problems)
    assert links >= 60
