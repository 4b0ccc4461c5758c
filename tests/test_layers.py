"""Layers import downwards only (docs/design.md, "Layers"): every module of mdflow imports, at its top,
inside a function or for type checking, only from its own layer or lower ones. Read from the source
(AST), so nothing is imported and the test is instant."""

import ast
import re
from pathlib import Path

import pytest

from mdflow import _MODULE_OF

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mdflow"

# Bottom to top; the same table as docs/design.md's "Layers". `x.*` is every module of package `x`
# (the package itself included); an exact name wins over a pattern (`_execution.run` is not with
# `_execution.*`). The package root `mdflow` sits at the bottom: it defines `__version__` and imports
# no module when imported (a public name imported from it counts as an import of its module).
# A new module is in no layer until it is placed here (`test_every_module_has_a_layer`).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("_errors", "_io"),
    ("_problem", "_model", "_flows", "_mirror", "_dual"),
    ("_solver.*",),
    ("_config", "_config_doc"),
    ("_execution.*",),
    ("_analysis.*",),
    ("_load",),
    ("_plotting.*",),
    ("_execution.run",),
    ("cli",),
)
# Of the solver layer, the config layer may import only the policy (no diffrax behind a config).
CONFIG_MAY_IMPORT = {"_solver.policy"}

# (importer, imported) pairs against the table that are known and belong to work in progress; none
# today. Exact: a pair that disappears must leave this set too.
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()

# Third-party packages a module must not reach through its own imports and those of the mdflow
# modules it imports (transitively).
MUST_NOT_REACH = {
    "_io": {"jax", "jaxlib", "equinox", "diffrax"},  # files only
    "_solver.policy": {"diffrax", "optimistix", "lineax"},
    "_config": {"diffrax", "optimistix", "lineax"},  # a config is validated without the integrator
}


def _modules() -> dict[str, Path]:
    """Every module of the package by its name relative to `mdflow` (`""` for the root)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _layer(module: str) -> int:
    """The layer of a module (a name relative to `mdflow`); the root is at the bottom."""
    if module == "":
        return 0
    for i, names in enumerate(LAYERS):
        if module in names:
            return i
    for i, names in enumerate(LAYERS):
        if any(n.endswith(".*") and (module == n[:-2] or module.startswith(n[:-1])) for n in names):
            return i
    raise KeyError(module)


def _imports(module: str) -> tuple[set[str], set[str]]:
    """The mdflow modules (relative names) and the third-party top-level packages `module` imports,
    anywhere in its source."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    ours, theirs = set(), set()

    def target(absolute: str) -> None:
        if absolute == "mdflow" or absolute.startswith("mdflow."):
            ours.add(absolute[len("mdflow."):] if absolute != "mdflow" else "")
        else:
            theirs.add(absolute.split(".")[0])

    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ["mdflow", *package.split(".")] if package else ["mdflow"]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            if not (source == "mdflow" or source.startswith("mdflow.")):
                target(source)
                continue
            relative = source[len("mdflow."):] if source != "mdflow" else ""
            for alias in node.names:
                submodule = f"{relative}.{alias.name}".lstrip(".")
                if submodule in MODULES:  # `from . import rosenbrock`
                    ours.add(submodule)
                elif relative == "" and alias.name in _MODULE_OF:  # a lazily exported public name
                    ours.add(_MODULE_OF[alias.name])
                else:
                    ours.add(relative)
    ours.discard(module)
    return ours, theirs


IMPORTS = {module: _imports(module) for module in MODULES}


def test_every_module_has_a_layer():
    missing = []
    for module in MODULES:
        try:
            _layer(module)
        except KeyError:
            missing.append(module)
    assert not missing, f"modules in no layer of LAYERS (place them, here and in docs/design.md): {missing}"


def test_layers_import_downwards_only():
    found = set()
    for module, (ours, _) in IMPORTS.items():
        for imported in ours:
            assert imported in MODULES, f"{module} imports {imported!r}, which is not a module of mdflow"
            upward = _layer(imported) > _layer(module)
            config_rule = (_layer(module) == _layer("_config") and _layer(imported) == _layer("_solver.policy")
                           and imported not in CONFIG_MAY_IMPORT)
            if upward or config_rule:
                found.add((module, imported))
    new, gone = found - KNOWN_VIOLATIONS, KNOWN_VIOLATIONS - found
    assert not new, f"imports against the layers (docs/design.md, 'Layers'): {sorted(new)}"
    assert not gone, f"fixed: remove from KNOWN_VIOLATIONS: {sorted(gone)}"


@pytest.mark.parametrize("module", sorted(MUST_NOT_REACH))
def test_light_modules_stay_light(module):
    seen, todo, reached = set(), [module], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        ours, theirs = IMPORTS[current]
        reached |= theirs
        todo += sorted(ours - {""})  # the root's own imports are the process's (`import mdflow`)
    assert not reached & MUST_NOT_REACH[module], (module, sorted(reached & MUST_NOT_REACH[module]))


def test_the_parser_sees_every_kind_of_import():
    """The parser's own check, on imports whose targets are known: relative, function-local, a
    submodule imported by `from package import`, a public name of the root, type-checking only."""
    ours, theirs = IMPORTS["_solver.solve"]
    assert {"_solver.rosenbrock", "_solver.policy", "_flows", "_errors"} <= ours  # `from . import rosenbrock`
    assert {"diffrax", "optimistix", "equinox"} <= theirs  # function-local and `if TYPE_CHECKING:`
    assert "" in IMPORTS["_execution.run"][0]  # `from .. import __version__`, inside a function
    assert _MODULE_OF["solve"] == "_execution.executor" and _layer("_execution.executor") == 4


def _design_layers() -> list[str]:
    """The module column of docs/design.md's "Layers" table, bottom row first."""
    text = (ROOT / "docs" / "design.md").read_text()
    section = text.split("\n## Layers\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d+) \| ([^|]+) \|", section, re.M)
    return [cells.strip() for _, cells in sorted(rows, key=lambda r: int(r[0]))]


def _as_docs(names: tuple[str, ...]) -> str:
    """A layer as design.md writes it: `_execution/*`, `_execution/run.py`, `_errors`, ..."""
    def one(name: str) -> str:
        if name.endswith(".*"):
            return f"`{name[:-2].replace('.', '/')}/*`"
        return f"`{name.replace('.', '/')}.py`" if "." in name else f"`{name}`"

    return ", ".join(one(n) for n in names)


def test_the_design_doc_shows_this_table():
    assert _design_layers() == [_as_docs(names) for names in LAYERS]


def test_solver_names_key_the_solver_factories():
    """The config validates solver names without importing the solver: the names it knows
    (`_solver/policy.py`) are exactly the factories' keys (`_solver/solve.py`), in order."""
    from mdflow._solver.policy import SOLVER_NAMES
    from mdflow._solver.solve import SOLVERS

    assert tuple(SOLVERS) == SOLVER_NAMES
