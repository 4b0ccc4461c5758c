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


def test_tutorial_runs(tmp_path, monkeypatch):
    """Every python block of docs/tutorial.md, in order, in one namespace (results under tmp_path)."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "tutorial.md").read_text(), re.S)
    assert len(blocks) >= 5
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "tutorial"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/tutorial.md[block {i}]", "exec"), namespace)  # noqa: S102
    assert (tmp_path / "results" / "tutorial" / "my_loss.png").stat().st_size > 0
