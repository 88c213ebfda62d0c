"""The documentation stays true: the CLI reference is generated, links resolve, no outside pointers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def test_cli_reference_is_current():
    from ca2vdm_cli.cli.reference import REGENERATE, render_reference

    committed = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert committed == render_reference(), f"docs/cli.md is stale; regenerate it with: {REGENERATE}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_exist(page):
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor on the same page
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"{page.name}: links to missing files: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_pointers_outside_the_repository(page):
    text = page.read_text(encoding="utf-8")
    for needle in ("spec §", "../shared"):
        assert needle not in text, f"{page.name} mentions {needle!r}: explain it in place instead"


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 160, f"README.md has {len(lines)} lines; move detail into docs/"


EXPECTED = "cli models batch resume bench training sprites-model differences library architecture generate"


def test_docs_exist():
    missing = {f"{name}.md" for name in EXPECTED.split()} - {p.name for p in DOCS}
    assert not missing
