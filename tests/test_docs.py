"""The documentation a newcomer follows: a README front door under its size budget, links that resolve, and
command examples that do what the page says they print."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_BYTES = 12 * 1024          # the front door: first screen, the path, the CLI, the flags, the links
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md")),
         ROOT / "deploy" / "README.md", ROOT / "bench" / "README.md"]
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")


def test_the_readme_is_a_front_door() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.encode()) < README_MAX_BYTES
    first_block = text.split("```sh", 1)[1].split("```", 1)[0]
    assert "make run" in first_block and "make test" in first_block     # the first two commands set everything up


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target, _anchor in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        if not (page.parent / target).exists():
            broken.append(target)
    assert not broken, f"{page.name} links to missing files: {broken}"


def _block_after(text: str, marker: str, lang: str) -> str:
    rest = text[text.index(marker):]
    return rest.split(f"```{lang}\n", 1)[1].split("```", 1)[0]


def test_the_simulate_example_prints_what_the_page_shows() -> None:
    page = (ROOT / "docs" / "cli.md").read_text()
    command = _block_after(page, "Example: `examples/simulate/cases.jsonl`", "sh").strip()
    shown = _block_after(page, "prints", "json").strip()
    assert command.startswith(".venv/bin/authz simulate")
    authz = Path(sys.executable).parent / "authz"
    out = subprocess.run(["bash", "-c", command.replace(".venv/bin/authz", str(authz), 1)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == shown


def test_the_own_case_example_runs_as_pasted() -> None:
    page = (ROOT / "docs" / "cli.md").read_text()
    command = _block_after(page, "To try a case of your own", "sh")
    authz = Path(sys.executable).parent / "authz"
    out = subprocess.run(["bash", "-c", command.replace(".venv/bin/authz", str(authz), 1)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=True)
    assert '"decision":"Allow"' in out.stdout.replace(" ", "")


def test_every_server_flag_is_documented() -> None:
    from authz.server.config import build_parser
    page = (ROOT / "docs" / "configuration.md").read_text()
    flags = {opt for action in build_parser()._actions for opt in action.option_strings
             if opt.startswith("--") and opt not in ("--help", "--version")}
    missing = sorted(f for f in flags if f"`{f}" not in page)
    assert not missing, f"docs/configuration.md does not describe {missing}"


def test_every_module_says_what_it_owns_and_the_architecture_page_lists_it() -> None:
    import ast
    page = (ROOT / "docs" / "architecture.md").read_text()
    modules = [p for p in sorted((ROOT / "authz").rglob("*.py")) if "v1" not in p.parts and p.name != "__init__.py"]
    assert len(modules) > 30
    for path in [*modules, ROOT / "server.py"]:
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc, f"{path.relative_to(ROOT)} has no docstring saying what it owns"
        first = doc.splitlines()[0].replace("|", "\\|")
        assert f"| `{path.relative_to(ROOT)}` | {first} |" in page, f"docs/architecture.md: {path.relative_to(ROOT)}"


def test_the_names_glossary_points_at_what_the_code_defines() -> None:
    """docs/architecture.md "Names": each `Name` (`authz/module.py`) of the glossary is defined in that module."""
    import importlib
    page = (ROOT / "docs" / "architecture.md").read_text()
    section = page.split("\n## Names\n", 1)[1].split("\n## ", 1)[0]
    pairs = re.findall(r"`([A-Za-z_]\w*)` \(`(authz/[\w/]+)\.py`\)", section)
    assert {name for name, _ in pairs} >= {"Decision", "Result", "Answer", "EncodedAnswer", "DecisionEvent"}
    for name, path in pairs:
        module = importlib.import_module(path.replace("/", "."))
        assert hasattr(module, name), f"docs/architecture.md \"Names\": {path}.py defines no {name}"
