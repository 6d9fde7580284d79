"""The dependency direction of the code base, read from the source (imports inside functions
count): shards (data) <- shg library <- launcher (Slurm) <- the CLI, no import cycles, and
nothing imports the demo recipe."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("shards", "shg", "launcher")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `name` imports anywhere in its file (functions included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import mod` names the module; `from mod import func` the module
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        for target in targets:
            # the deepest project module this names (`from .x import y` may name a function)
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def _layer(module: str) -> int:
    if module.startswith("shards"):
        return 0
    if module == "shg.cli" or module.startswith("shg.cli."):
        return 3
    if module.startswith("launcher"):
        return 2
    return 1


def test_layers_only_import_downwards():
    wrong = [f"{m} -> {t}" for m, targets in _graph().items() for t in targets
             if _layer(t) > _layer(m)]
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def test_no_module_imports_one_that_imports_it_back():
    graph = _graph()
    # Tarjan's strongly connected components: any component of 2+ modules is a cycle.
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_nothing_imports_the_demo_recipe():
    importers = [m for m, targets in _graph().items() if "shg.demo" in targets]
    assert not importers


def test_the_scan_sees_imports_inside_functions():
    """The checker itself: a function-level import of a higher layer is found."""
    graph = _graph()
    assert "launcher.submit" in graph["shg.cli.submit"]  # imported inside submit()
    assert "shards.build" in graph["launcher.jobs"]      # imported inside build_shards
    assert _layer("launcher.jobs") > _layer("shg.training")
