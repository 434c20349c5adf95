"""The layer map in docs/architecture.md is true of the code: every module in one layer, every
sub-package in one layer, imports only of its own layer or lower ones, no import cycle."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "architecture.md"
SECTION = "## Layers and packages"
PACKAGE = REPO / "waker"


def layer_map() -> list[tuple[str, list[str]]]:
    """[(layer, [module, ...]), ...] from the doc, lowest layer first: each `### N. name` heading,
    then the modules named in the first column of its table."""
    text = DOC.read_text()
    assert SECTION in text, f"{DOC.relative_to(REPO)} has no {SECTION!r} section"
    layers: list[tuple[str, list[str]]] = []
    for line in text.split(SECTION, 1)[1].splitlines():
        if line.startswith("## "):
            break
        if heading := re.fullmatch(r"### \d+\. (.+)", line):
            layers.append((heading.group(1), []))
        elif layers and (row := re.match(r"\| `([a-z_0-9.]+)` \|", line)):
            layers[-1][1].append(row.group(1))
    return [(name, modules) for name, modules in layers if modules]


def modules() -> dict[str, Path]:
    """Every module of the package by its name under waker/ (`errors`; `shell.supervisor` in a sub-package).
    A sub-package's `__init__` says what the package is and holds no code (see `test_packages_hold_no_code`)."""
    return {
        ".".join(path.relative_to(PACKAGE).with_suffix("").parts): path
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "__init__.py"
    }


def packages() -> dict[str, Path]:
    """Every sub-package of waker/ by its name (`shell`), with its `__init__.py`."""
    return {path.parent.name: path for path in sorted(PACKAGE.glob("*/__init__.py"))}


def _module_of(dotted: str, known: dict[str, Path]) -> str | None:
    """The module an import of `waker.<dotted>` (or of a name in it) loads: the longest known prefix."""
    parts = dotted.split(".")
    return next((".".join(parts[:n]) for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in known), None)


def imports(path: Path) -> dict[str, int]:
    """The waker modules `path` imports (anywhere in it, so lazy imports count too), with a line of each."""
    known = modules()
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "waker" or node.module.startswith("waker."):
                base = node.module.removeprefix("waker").lstrip(".")
                targets = [f"{base}.{alias.name}".lstrip(".") for alias in node.names]
        elif isinstance(node, ast.Import):
            targets = [alias.name.removeprefix("waker.") for alias in node.names if alias.name.startswith("waker.")]
        for target in targets:
            if (module := _module_of(target, known)) is not None:
                found.setdefault(module, node.lineno)
    return found


def layer_of() -> dict[str, int]:
    return {module: index for index, (_, listed) in enumerate(layer_map()) for module in listed}


def where_to_add(module: str, placed: dict[str, int]) -> str:
    names = [name for name, _ in layer_map()]
    below = [(placed[m], m) for m in imports(modules()[module]) if m in placed]
    lowest = max((index for index, _ in below), default=0)
    because = ", ".join(f"{m} ({names[i]})" for i, m in sorted(below)) or "no waker module"
    return (
        f'{modules()[module].relative_to(REPO)} is in no layer: add a row "| `{module}` | <its job> |" '
        "to the table under "
        f"'### {lowest + 1}. {names[lowest]}' in {DOC.relative_to(REPO)} ({SECTION!r}), the lowest layer its "
        f"imports allow (it imports {because}), or to a later one if its job belongs there "
        f"(the layers: {', '.join(names)})"
    )


def test_every_module_is_in_exactly_one_layer():
    listed = [module for _, layer in layer_map() for module in layer]
    twice = sorted({m for m in listed if listed.count(m) > 1})
    assert not twice, f"listed in more than one layer of {DOC.relative_to(REPO)}: {twice}; keep each in one"
    placed = layer_of()
    missing = [where_to_add(m, placed) for m in modules() if m not in placed]
    assert not missing, "\n".join(missing)
    gone = sorted(set(placed) - set(modules()))
    assert not gone, f"{DOC.relative_to(REPO)} lists modules that waker/ does not have: {gone}; remove their rows"


def test_no_module_imports_a_later_layer():
    names = [name for name, _ in layer_map()]
    placed = layer_of()
    wrong = [
        f"{path.relative_to(REPO)}:{line} ({names[placed[module]]}) imports waker.{imported} "
        f"({names[placed[imported]]}), a later layer: move what it needs down, or pass it in from the layer above"
        for module, path in modules().items()
        if module in placed
        for imported, line in imports(path).items()
        if imported in placed and placed[imported] > placed[module]
    ]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    graph = {module: set(imports(path)) & set(modules()) for module, path in modules().items()}
    cycles: list[list[str]] = []
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for imported in sorted(graph[module]):
            if state.get(imported) == "open":
                cycles.append([*path[path.index(imported) :], imported])
            elif imported not in state:
                visit(imported, [*path, imported])
        state[module] = "done"

    for module in graph:
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def test_every_package_is_one_layer():
    names = [name for name, _ in layer_map()]
    placed = layer_of()
    for package in packages():
        layers = {names[placed[m]] for m in modules() if m.startswith(f"{package}.") and m in placed}
        assert len(layers) <= 1, f"waker/{package}/ spans the layers {sorted(layers)}: a package is one layer"
    nested = sorted(str(p.relative_to(REPO)) for p in PACKAGE.glob("*/*/__init__.py"))
    assert not nested, f"packages inside sub-packages: {nested}; the map is one level deep"


def test_packages_hold_no_code():
    """An `__init__.py` is the package's docstring only: what a module holds is found under its own name."""
    for package, init in packages().items():
        tree = ast.parse(init.read_text())
        assert ast.get_docstring(tree), f"{init.relative_to(REPO)} needs a docstring saying what waker/{package}/ is"
        assert len(tree.body) == 1, f"{init.relative_to(REPO)} holds code: move it into a module of the package"


def test_model_records_have_one_writer():
    """Each model's state has one writer, the supervisor: nothing else assigns a record's slot or
    container, sets its death signal, or adds or removes records."""
    writer = PACKAGE / "shell" / "supervisor.py"
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == writer:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign | ast.Delete):
                targets = node.targets if isinstance(node, ast.Assign | ast.Delete) else [node.target]
            written = [t for t in targets if isinstance(t, ast.Attribute) and t.attr in ("slot", "container", "died")]
            written += [t for t in targets if isinstance(t, ast.Subscript) and "records" in ast.unparse(t.value)]
            if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("died.set"):
                written.append(node)
            found += [f"{path.relative_to(REPO)}:{getattr(t, 'lineno', node.lineno)} {ast.unparse(t)}" for t in written]
    assert not found, "model records written outside waker/shell/supervisor.py (give it a command): " + "; ".join(found)


def test_the_check_command_imports_no_aiohttp(tmp_path):
    """`waker check` runs where the server does not (a laptop, CI): it needs the config and core only."""
    config = tmp_path / "models.toml"
    config.write_text('[[model]]\nid = "alpha"\nimage = "i"\n')
    probe = (
        "import sys; from waker.cli.main import main; code = main(['check', '--config', sys.argv[1]]); "
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'aiohttp', 'aiodocker'}); "
        "print(code, heavy)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(config)], capture_output=True, text=True, timeout=60, cwd=REPO, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "0 []", result.stdout
