"""The documentation stays true to the code: the configuration reference is what the settings schema
renders, every relative link in README.md and docs/ leads somewhere, and the README stays a quick start."""

from __future__ import annotations

import difflib
import re
import unicodedata
from pathlib import Path

import pytest

from m2grl.cli import main
from m2grl.cli.config_reference import REFERENCE_FILE, REGENERATE_COMMAND, render_reference

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
README_MAX_LINES = 250
PAGES = [README, *sorted((REPO_ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+).+?\1", re.DOTALL)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def test_configuration_reference_matches_the_settings() -> None:
    on_disk = (REPO_ROOT / REFERENCE_FILE).read_text()
    rendered = render_reference()
    if on_disk != rendered:
        diff = "".join(list(difflib.unified_diff(on_disk.splitlines(keepends=True), rendered.splitlines(keepends=True),
                                                 str(REFERENCE_FILE), "rendered"))[:60])
        pytest.fail(f"{REFERENCE_FILE} differs from m2grl/settings.py; regenerate it from the repository root "
                    f"with `.venv/bin/{REGENERATE_COMMAND}`\n{diff}")


def test_reference_command_prints_and_writes_the_page(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "reference"]) == 0
    assert capsys.readouterr().out == render_reference()
    page = tmp_path / "configuration.md"
    assert main(["config", "reference", "--write", str(page)]) == 0
    assert page.read_text() == render_reference()


def test_readme_is_a_quick_start() -> None:
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; at most {README_MAX_LINES} (move details to docs/)"


def test_the_readme_set_up_commands_are_make_demo_and_make_test() -> None:
    readme = README.read_text()
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (REPO_ROOT / ".ci" / "run").read_text()  # CI runs the README's test command


def _prose(text: str) -> str:
    """The Markdown outside code blocks and code spans, where links and headings mean something."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = CODE_SPAN.sub(lambda match: match.group(0).strip("`"), heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text).lower()
    return "".join(c for c in text if c in " -" or _is_word_character(c)).replace(" ", "-")


def _is_word_character(c: str) -> bool:
    category = unicodedata.category(c)
    return category[0] in "LM" or category in ("Nd", "Pc")


def _anchors(page: Path) -> set[str]:
    anchors: set[str] = set()
    for heading in HEADING.findall(FENCE.sub("", page.read_text())):
        anchor, n = _anchor(heading), 1
        while anchor in anchors:  # repeated headings get -1, -2, ...
            anchor, n = f"{_anchor(heading)}-{n}", n + 1
        anchors.add(anchor)
    return anchors


def _broken_links(page: Path) -> list[str]:
    broken = []
    for target in LINK.findall(_prose(page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(f"{target} (no heading with anchor #{anchor})")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=[str(page.relative_to(REPO_ROOT)) for page in PAGES])
def test_relative_links_resolve(page: Path) -> None:
    assert _broken_links(page) == []


def test_the_anchor_rule_matches_github() -> None:
    assert _anchor("Query from your own program") == "query-from-your-own-program"
    assert _anchor("Entries of views.stores") == "entries-of-viewsstores"
    assert _anchor("Backfill: a new store, in bulk") == "backfill-a-new-store-in-bulk"
    assert _anchor("`m2grl query` and grpcurl") == "m2grl-query-and-grpcurl"
