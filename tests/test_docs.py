"""The documentation site (mkdocs.yml, docs/) builds without a broken link or anchor, holds the one
configuration table, and the README, its landing page, links only to pages and headings that exist."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import yaml
from markdown.extensions.toc import slugify

from backend.settings import Settings, markdown_table
from tests.conftest import REPO_ROOT

DOCS = REPO_ROOT / "docs"
LINK = re.compile(r"\]\(([^)\s]+)\)")


def headings_slugs(page: Path) -> set[str]:
    """The anchors MkDocs gives a page's headings (fenced code left out: a `# comment` there is no heading)."""
    slugs, in_code = set(), False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            slugs.add(slugify(line.lstrip("#").strip().replace("`", ""), "-"))
    return slugs


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    """Every page in the nav, every link and every anchor resolves (`--strict` turns MkDocs' warnings into a failure)."""
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "configuration" / "index.html").is_file()


def test_every_page_is_in_the_nav() -> None:
    def pages(nav: list) -> set[str]:
        found = set()
        for entry in nav:
            for value in (entry.values() if isinstance(entry, dict) else [entry]):
                found |= pages(value) if isinstance(value, list) else {value}
        return found

    nav = yaml.safe_load((REPO_ROOT / "mkdocs.yml").read_text())["nav"]
    assert pages(nav) == {str(page.relative_to(DOCS)) for page in DOCS.rglob("*.md")}


def test_configuration_page_documents_every_setting() -> None:
    page = (DOCS / "configuration.md").read_text()
    assert markdown_table() in page, "docs/configuration.md's table is stale: paste `python -m backend.settings`"
    for field in dataclasses.fields(Settings):
        assert f"`{field.name.upper()}`" in page


def test_readme_links_resolve() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    local = [link for link in LINK.findall(readme) if not link.startswith(("http://", "https://"))]
    assert local, "the README links into docs/"
    for link in local:
        path, _, anchor = link.partition("#")
        assert (REPO_ROOT / path).is_file(), link
        if anchor:
            assert anchor in headings_slugs(REPO_ROOT / path), link


def test_readme_keeps_the_ci_test_command() -> None:
    """.ci/run runs the command under the README's "Tests" heading."""
    readme = (REPO_ROOT / "README.md").read_text()
    tests_section = readme.split("\n## Tests\n", 1)[1]
    assert tests_section.lstrip().startswith("```bash\npython -m pytest -q -p no:cacheprovider\n```")
    assert "python -m pytest -q -p no:cacheprovider" in (REPO_ROOT / ".ci" / "run").read_text()
