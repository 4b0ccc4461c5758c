"""The documentation: links resolve inside the repository, § references exist, the config reference is
generated from the schema, the CLI help is complete, and the tutorial's code runs."""

import re
import subprocess
from pathlib import Path

import pytest

from mdflow import cli
from mdflow._config import SCHEMA
from mdflow._config_doc import DESCRIPTIONS, config_reference

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", ROOT / "experiments" / "README.md", *(ROOT / "docs").glob("*.md")])
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_slug(m) for m in re.findall(r"^#+ (.*)$", path.read_text(), re.M)}


def _tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        files = [ROOT / line for line in out.splitlines()]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: every source file
        files = [p for p in ROOT.rglob("*") if ".venv" not in p.parts and ".git" not in p.parts]
    return [p for p in files if p.is_file() and p.suffix in {".py", ".md", ".toml", ".txt", ""}]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve_inside_the_repository(doc):
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        resolved = (doc.parent / path).resolve() if path else doc
        assert resolved.is_relative_to(ROOT), f"{doc.name}: {target} leaves the repository"
        assert resolved.exists(), f"{doc.name}: {target} does not exist"
        if anchor and resolved.suffix == ".md":
            assert anchor in _anchors(resolved), f"{doc.name}: no heading #{anchor} in {path or doc.name}"


def test_no_file_names_a_path_outside_the_repository():
    outside = ["../" + "shared", "ENGINEERING" + ".md", "ARCHITECTURE" + ".md", "MATH" + ".md", "/work" + "/"]
    for path in _tracked_files():
        text = path.read_text(errors="replace")
        for needle in outside:
            assert needle not in text, f"{path.relative_to(ROOT)} names {needle!r}"


def test_section_references_exist_in_math_md():
    sections = set(re.findall(r"^#+ (§[\d.]+)", (ROOT / "docs" / "math.md").read_text(), re.M))
    assert {"§1", "§2", "§3", "§3.1", "§3.2", "§4", "§5", "§6", "§7"} <= sections
    for path in _tracked_files():
        for ref in re.findall(r"§(\d+(?:\.\d+)?)", path.read_text(errors="replace")):
            assert f"§{ref}" in sections, f"{path.relative_to(ROOT)} cites §{ref}, absent from docs/math.md"


def test_config_reference_is_generated_from_the_schema():
    text = (ROOT / "docs" / "config.md").read_text()
    assert text == config_reference(), "docs/config.md is stale: python -m mdflow._config_doc > docs/config.md"
    documented = set(re.findall(r"^\| `(\w+\.\w+)` \|", text, re.M))
    assert documented == {f"{t}.{k}" for t, keys in SCHEMA.items() for k in keys}
    # Each key is described exactly once: by the schema's `doc` or by DESCRIPTIONS, never both or neither.
    for table, keys in SCHEMA.items():
        for key, spec in keys.items():
            assert bool(spec.doc) != (f"{table}.{key}" in DESCRIPTIONS), f"{table}.{key}"
    assert set(DESCRIPTIONS) <= documented


def test_cli_help_names_every_option(capsys):
    parser = cli.parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    assert set(subparsers) == {"run", "check", "plot", "info"}
    for name, sub in subparsers.items():
        usage = sub.format_usage()
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.option_strings[0]} has no help"
                assert action.option_strings[0] in usage, f"{name} usage lacks {action.option_strings[0]}"
    assert "--force" in subparsers["check"].format_usage()
    top = parser.format_help()
    assert all(name in top for name in subparsers) and "exit" in top.lower()


@pytest.mark.e2e
def test_tutorial_runs(tmp_path, monkeypatch):
    """Every python block of docs/tutorial.md, in order, in one namespace (results under tmp_path)."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "tutorial.md").read_text(), re.S)
    assert len(blocks) >= 5
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "tutorial"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/tutorial.md[block {i}]", "exec"), namespace)  # noqa: S102
    assert (tmp_path / "results" / "tutorial" / "my_loss.png").stat().st_size > 0



# ---------------------------------------------------------------------------------------------------
# References to code: a module, name or file that the docs or the code's own docstrings and comments
# name must exist, so that moving a module fails here rather than leaving a reader at a dead end.
# The rule, what counts as a reference: `test_code_references_resolve`'s docstring.

SOURCES = sorted([*DOCS, *(ROOT / "mdflow").rglob("*.py"), *(ROOT / "benchmarks").glob("*.py"),
                  *(p for p in (ROOT / "tests").glob("*.py") if p.name != "test_docs.py")])  # it plants bad ones
TICKED = re.compile(r"`([^`\n]+)`")
FILE = re.compile(r"[\w./-]+\.(py|md)(::\w+)?|(mdflow|_[a-z]\w*)(/[\w.]*)*/")
DOTTED = re.compile(r"(mdflow|_[a-z]\w*)(\.\w+)+")
OUTPUT = re.compile(r"[\w.-]+\.(json|npz|npy|png|pdf|svg|toml|txt|log|csv)")
NAME_DOT_NAME = re.compile(r"([a-z]\w*)\.(\w+)(\.\w+)*")  # CONFIG, INSTANCE, MODULE candidates
CLASS_ATTRIBUTE = re.compile(r"([A-Z]\w*)\.(\w+)")
PRIVATE = re.compile(r"_[a-z]\w*")
PLAIN_PATH = re.compile(r"(?<![\w/.])(?:mdflow|tests|benchmarks|docs|experiments|configs)/[\w/.-]*\.(?:py|md|toml)")
RESULT_PREFIXES = {"analysis"}
TOP_LEVEL = re.compile(r"^(?:def|class) (\w+)|^(\w+)\s*[:=]", re.M)


def _code_index() -> dict:
    """mdflow's modules (each imported: nothing is solved), their classes, the top-level and private
    names mdflow and benchmarks/ define, the benchmarks scripts, the config schema and the repository's
    file names."""
    import importlib
    import inspect
    import pkgutil

    import mdflow
    from mdflow._config import SCHEMA

    modules = {m.name for m in pkgutil.walk_packages(mdflow.__path__, "mdflow.")} | {"mdflow"}
    by_last: dict[str, list[str]] = {}
    classes: dict[str, list[type]] = {}
    for name in sorted(modules):
        by_last.setdefault(name.rsplit(".", 1)[-1], []).append(name)
        for key, value in vars(importlib.import_module(name)).items():
            if inspect.isclass(value) and value.__module__.startswith("mdflow"):
                classes.setdefault(key, []).append(value)
    defined, top_level = set(), set()
    for path in [*(ROOT / "mdflow").rglob("*.py"), *(ROOT / "benchmarks").glob("*.py")]:
        text = path.read_text()
        for groups in re.findall(r"^\s*(?:def|class) (_\w+)|^(_\w+)\s*[:=]", text, re.M):
            defined |= set(groups) - {""}
        top_level |= {name for groups in TOP_LEVEL.findall(text) for name in groups if name}
    scripts = {p.stem: p for p in (ROOT / "benchmarks").glob("*.py")}
    files = [p for p in ROOT.rglob("*") if p.suffix in {".py", ".md"} and not {".venv", ".git"} & set(p.parts)]
    return {"modules": modules, "by_last": by_last, "classes": classes, "defined": defined,
            "top_level": top_level, "scripts": scripts, "schema": SCHEMA, "basenames": {p.name for p in files}}


@pytest.fixture(scope="module")
def code_index():
    return _code_index()


def _has(obj, attrs) -> bool:
    for attr in attrs:
        if not hasattr(obj, attr):
            return attr in getattr(obj, "__dataclass_fields__", {}) and attr == attrs[-1]  # a field, no default
        obj = getattr(obj, attr)
    return True


def _resolves_dotted(name: str, index, heads=None) -> bool:
    import importlib

    parts = name.split(".")
    if heads is None:
        heads = ["mdflow"] if parts[0] == "mdflow" else index["by_last"].get(parts[0], [])
    for module in heads:
        rest = parts[1:]
        while rest and f"{module}.{rest[0]}" in index["modules"]:
            module, rest = f"{module}.{rest[0]}", rest[1:]
        if _has(importlib.import_module(module), rest):
            return True
    return False


def _public_modules(head: str, index) -> list[str]:
    """mdflow's modules spelt `head` without their underscore (`rosenbrock` -> `mdflow._solver.rosenbrock`)."""
    return [m for m in index["by_last"].get(f"_{head}", []) + index["by_last"].get(head, []) if m != "mdflow"]


def _resolves_file(token: str, source: Path, index) -> bool:
    path, _, test = token.partition("::")
    bases = [ROOT, source.parent, ROOT / "mdflow", *(p for p in (ROOT / "mdflow").iterdir() if p.is_dir())]
    hits = [base / path for base in bases if (base / path).exists()]
    if not hits and "/" not in path.rstrip("/"):  # a bare file name (`run.py`): a file of the repository
        return path in index["basenames"] and not test
    return bool(hits) and (not test or any(re.search(rf"^\s*def {test}\(", h.read_text(), re.M) for h in hits))


def _resolves_name_dot_name(token: str, called: bool, index) -> bool | None:
    """CONFIG, INSTANCE and MODULE: whether `token` resolves, None when it is not a reference."""
    parts = token.split(".")
    head, attr = parts[0], parts[1]
    modules = _public_modules(head, index)
    if head in RESULT_PREFIXES:
        return None
    instances = index["classes"].get(head.capitalize(), [])
    if head in index["schema"] and len(parts) == 2:
        return (attr in index["schema"][head] or (bool(modules) and _resolves_dotted(token, index, modules))
                or any(_has(c, [attr]) for c in instances))
    if instances:
        return any(_has(c, [attr]) for c in instances)
    if not (modules or head in index["scripts"]):
        return None
    if not (attr[0].isupper() or called or attr in index["top_level"]):
        return None
    if head in index["scripts"]:
        return attr in {n for groups in TOP_LEVEL.findall(index["scripts"][head].read_text()) for n in groups}
    return _resolves_dotted(token, index, modules)


def _stale_references(source: Path, index) -> list[str]:
    """What `source` names that does not exist (the rules: `test_code_references_resolve`)."""
    text = source.read_text()
    if source.suffix == ".md":
        text = re.sub(r"```.*?```", "", text, flags=re.S)  # code blocks hold examples, not references
    stale = []
    for ticked in TICKED.findall(text):
        ref = ticked.removesuffix("()")
        if FILE.fullmatch(ref):
            ok = _resolves_file(ref, source, index)
        elif DOTTED.fullmatch(ref):
            ok = _resolves_dotted(ref, index)
        elif OUTPUT.fullmatch(ref):
            continue
        elif NAME_DOT_NAME.fullmatch(ref):
            ok = _resolves_name_dot_name(ref, ticked != ref, index)
            if ok is None:
                continue
        elif m := CLASS_ATTRIBUTE.fullmatch(ref):
            cls, attr = m.groups()
            ok = cls not in index["classes"] or any(_has(c, [attr]) for c in index["classes"][cls])
        elif PRIVATE.fullmatch(ref) and not ref.endswith("__"):
            ok = ref in index["by_last"] or ref in index["defined"]
        else:
            continue
        if not ok:
            stale.append(ref)
    stale += [path for path in PLAIN_PATH.findall(text) if not (ROOT / path).exists()]
    return list(dict.fromkeys(stale))


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_code_references_resolve(source, code_index):
    """What the docs, README and the code (mdflow, benchmarks/, tests/) name in backticks exists.

    Which backticked strings are references (outside fenced code blocks of a .md; a trailing `()` dropped),
    tried in this order; every other backticked string (`x.shape`, `jax.lax.map`, `summary.json`,
    `flow.vector_field`, `args.problem`) is ordinary text and is not checked:
      FILE       a file, package folder or test: `_solver/linear.py`, `docs/sweeps.md`, `benchmarks/x.py`,
                 `run.py`, `mdflow/_execution/`, `tests/test_store.py::test_x`. It must exist under the
                 repository root, the citing file's folder, `mdflow/` or one of its packages; a bare file
                 name (`run.py`) must be some file of the repository; `::name` must be a `def` in it.
      DOTTED     `mdflow.` or a private module first: `mdflow.solve`, `_execution.store`, `_flows.GF`,
                 `mdflow._execution.plan.Layout`. It must import (the modules of mdflow whose last
                 part is the first word) and `getattr` to the end.
      OUTPUT     a file mdflow or a script writes (`summary.json`, `trajectories.npz`, `figures.png`): not a
                 reference.
      CONFIG     `table.key` with `table` a config table (`solve.rtol`, `sweep.chunk_size`): a key of the
                 schema, else `module.name` of the module spelt `table` (`solve.solve_batch`) or an
                 attribute of the class spelt `Table` (`problem.scale` is `Problem.scale`).
      INSTANCE   `instance.attribute` where `Instance` is a class mdflow defines: `config.solve_policy()`
                 is `Config.solve_policy`.
      MODULE     a public module's name first, that of an mdflow module without its underscore or of a
                 benchmarks script: `rosenbrock.StiffSwitch`, `executor.run_calls()`,
                 `vmap_policy.CountingSwitch`, when the name after it is capitalized, was written as a call,
                 or is a name some module of mdflow or benchmarks/ defines at top level; record fields that
                 share a module's name (`stages.t_warm_measured`, `kkt.hypentropy.stationarity`) are not.
                 It must be in that module (an mdflow module is imported, a script is parsed, never run).
                 CONFIG, INSTANCE and MODULE skip `analysis.…`, which names both config keys and stored
                 arrays (`analysis.w_l1`).
      CLASS      `Class.attribute` of a class mdflow defines: `StiffSwitch.batched`, `Config.hash()`.
      PRIVATE    a bare private name: `_setup_jax`, `_body`; some module of mdflow defines it or is it.
    and, without backticks, a repository path in plain text ("see benchmarks/vmap_policy.py") must exist.
    """
    stale = _stale_references(source, code_index)
    assert not stale, f"{source.relative_to(ROOT)} names what does not exist: {sorted(set(stale))}"


def test_the_reference_check_rejects_what_moved(code_index, tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text(
        "`mdflow._execution.plan.effective_vmap_width`, `_execution.plan.Layout.solver`, `_solver/solve.py`,\n"
        "`tests/test_docs.py::test_the_reference_check_rejects_what_moved`, `StiffSwitch.batched`, `_body`,\n"
        "`solve.rtol`, `grid.tau1`, `sweep.chunk_size` (config keys), `problem.scale` (`Problem.scale`),\n"
        "`rosenbrock.StiffSwitch`, `executor.run_calls()`, `rosenbrock.Rodas4`, `docs/sweeps.md`,\n"
        "`vmap_policy.CountingSwitch`, `benchmarks/vmap_policy.py`, `mdflow.solve`, `_execution.store`,\n"
        "`summary.json`, `jax.lax.map` (not mdflow's), `x.shape`, `stages.t_warm_measured` (a record field),\n"
        "`analysis.w_l1` (a stored array), `config.solve_policy()` (`Config.solve_policy`).\n"
        "Moved: `_sweep.chunk_solver`, `mdflow._execution.plan.no_such_name`, `_sweep.py`, `_run.execute()`,\n"
        "`tests/test_docs.py::test_no_such_test`, `StiffSwitch.no_such_attribute`, `_no_such_helper`,\n"
        "`mdflow/_stages.py`, `solve.no_such_key`, `rosenbrock.NoSuchSolver`, `sweep.no_such_function()`,\n"
        "`store.chunk_solver` (a name of another module), `vmap_policy.NoSuchCounter`, `docs/no_such.md`,\n"
        "`mdflow.no_such_name`, `config.no_such_method()`, and in plain text benchmarks/no_such_bench.py.\n"
        "```\n`_inside_a_code_block`\n```\n"
    )
    assert _stale_references(doc, code_index) == [
        "_sweep.chunk_solver", "mdflow._execution.plan.no_such_name", "_sweep.py", "_run.execute",
        "tests/test_docs.py::test_no_such_test", "StiffSwitch.no_such_attribute", "_no_such_helper",
        "mdflow/_stages.py", "solve.no_such_key", "rosenbrock.NoSuchSolver", "sweep.no_such_function",
        "store.chunk_solver", "vmap_policy.NoSuchCounter", "docs/no_such.md", "mdflow.no_such_name",
        "config.no_such_method",
        "benchmarks/no_such_bench.py",
    ]


# Timings, percentages and step-count measurements rot as code and machines change: they live in
# docs/benchmarks.md and docs/solvers.md with their commands; docstrings say why in words.
TIMING = re.compile(r"\d(?:\.\d+)? ?(?:s|ms|µs)\b|\d ?%|\d(?:\.\d+)? ?k? steps\b|GFLOP|\d ?× (?:faster|slower|fewer|more)"
                    r"|\b\d+ of \d+ runs|\b(?:few|several) percent")


def _docstring_timings(source: str) -> list[str]:
    import ast

    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            found += [line.strip() for line in (ast.get_docstring(node) or "").splitlines() if TIMING.search(line)]
    return found


def test_docstrings_hold_no_benchmark_numbers():
    assert _docstring_timings('def f():\n    """Fast: 0.034 s vmapped, 22.8 k steps, 64 % mixed."""\n') == [
        "Fast: 0.034 s vmapped, 22.8 k steps, 64 % mixed."]
    assert _docstring_timings('class A:\n    """262 steps; 3.4× faster\nIn 13 of 24 runs, a few percent."""\n') == [
        "262 steps; 3.4× faster", "In 13 of 24 runs, a few percent."]
    assert _docstring_timings('class A:\n    """`n × n` blocks, rtol 1e-8, a 100× looser tolerance."""\n') == []
    for path in sorted((ROOT / "mdflow").rglob("*.py")):
        found = _docstring_timings(path.read_text())
        assert not found, f"{path.relative_to(ROOT)}: move these numbers to docs/benchmarks.md: {found}"


@pytest.mark.e2e
def test_readme_python_example_runs(tmp_path, monkeypatch):
    """The README's python block, after the quickstart it reads (run in-process, figures off)."""
    import mdflow
    from mdflow._config import QUICKSTART

    (block,) = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    monkeypatch.chdir(tmp_path)
    records, _ = mdflow.execute(mdflow.config_from_dict({**QUICKSTART, "output": {
        **QUICKSTART["output"], "figures": False}}), "results/quickstart")
    assert len(records) == 8
    namespace: dict = {"__name__": "readme"}
    exec(compile(block, "README.md[python]", "exec"), namespace)  # noqa: S102
    assert mdflow.status_name(namespace["sol"].status) == "ok"
