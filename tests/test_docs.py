"""The docs are reference, not record: the history lives in one dated log, every other page says what is
true now, reads in a few minutes, cites nothing outside the repository, and its score tables are generated
from the committed DVC metrics."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "log.md") + [ROOT / "README.md"]
DATE = re.compile(r"20[0-9]{2}-[01][0-9]-[0-3][0-9]")


@pytest.mark.parametrize("page", REFERENCE, ids=lambda p: p.name)
def test_reference_pages_are_short_and_undated(page):
    text = page.read_text()
    assert len(text.splitlines()) <= 400, f"{page.name} is over 400 lines: move history to docs/log.md"
    assert not DATE.search(text), f"{page.name} names a date ({DATE.search(text).group()}): that is the log's"


def test_nothing_cites_a_file_outside_the_repository():
    cited = re.compile(r"\b(DESIGN|WORLD|STYLE)\.md\b|\.\./shared/")
    files = [p for folder in ("arm", "flows", "bentos", "benchmarks", "configs", "docs", "tests")
             for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".md", ".yaml") and p != Path(__file__)]
    files += [ROOT / "README.md", ROOT / "dvc.yaml", ROOT / "prefect.yaml"]
    offenders = [str(p.relative_to(ROOT)) for p in files if p.is_file() and cited.search(p.read_text())]
    assert not offenders, offenders


def test_every_docs_link_resolves():
    link = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
    missing = []
    for page in [*REFERENCE, ROOT / "docs" / "log.md"]:
        for target in link.findall(page.read_text()):
            if "://" not in target and not (page.parent / target).exists():
                missing.append(f"{page.name} -> {target}")
    assert not missing, missing


def test_the_score_tables_match_the_committed_metrics():
    result = subprocess.run([sys.executable, str(ROOT / "docs" / "tables.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
