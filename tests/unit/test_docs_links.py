"""The documentation cannot rot silently: every relative link of README.md and docs/*.md
points to an existing file (and, with `#anchor`, to an existing heading of it), every page of
docs/ is reachable from the README, and every setting of config.py is named in
docs/configuration.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_LINK = re.compile(r"(?<!\!)\[[^\]\n]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def markdown_files(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def _prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks (a `# comment` in a bash block is no heading)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def slugify(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped (hyphens and
    underscores kept), spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found: set[str] = set()
    for line in _prose_lines(path.read_text(encoding="utf-8")):
        match = _HEADING.match(line)
        if not match:
            continue
        slug = slugify(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def links(path: Path) -> list[str]:
    targets = []
    for line in _prose_lines(path.read_text(encoding="utf-8")):
        line = re.sub(r"`[^`]*`", "", line)  # inline code is not a link
        targets.extend(_LINK.findall(line))
    return targets


def broken_links(files: list[Path]) -> list[str]:
    """`file: target (why)` for every relative link that does not resolve."""
    problems = []
    for source in files:
        for target in links(source):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            path_part, _, anchor = target.partition("#")
            resolved = (source.parent / path_part).resolve() if path_part else source
            if not resolved.exists():
                problems.append(f"{source.name}: {target} (no such file)")
                continue
            if anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                problems.append(f"{source.name}: {target} (no heading #{anchor})")
    return problems


def test_every_relative_link_and_anchor_resolves() -> None:
    files = markdown_files(ROOT)
    assert len(files) > 10
    assert broken_links(files) == []


def test_every_docs_page_is_linked_from_the_readme() -> None:
    readme_links = {t.partition("#")[0] for t in links(ROOT / "README.md")}
    pages = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    assert pages - readme_links == set()


def test_every_setting_is_named_in_configuration_md() -> None:
    from ia_continu.config import Settings

    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    names = {f"IA_{name.upper()}" for name in Settings.model_fields}
    assert len(names) > 50
    assert {n for n in names if not re.search(rf"`{n}`", text)} == set()


def test_the_checker_finds_a_missing_file_and_a_missing_anchor(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text(
        "# Page A\n\n## Set-up (`make run`)\n\n```bash\n# not a heading\n```\n",
        encoding="utf-8",
    )
    (tmp_path / "README.md").write_text(
        "[ok](docs/a.md) [ok](docs/a.md#set-up-make-run) [web](https://example.org/x)\n"
        "[gone](docs/b.md) [bad anchor](docs/a.md#not-a-heading) [self](#page-a)\n"
        "`[in code](docs/c.md)`\n",
        encoding="utf-8",
    )
    problems = broken_links(markdown_files(tmp_path))
    assert problems == [
        "README.md: docs/b.md (no such file)",
        "README.md: docs/a.md#not-a-heading (no heading #not-a-heading)",
        "README.md: #page-a (no heading #page-a)",
    ]


@pytest.mark.parametrize(
    ("heading", "slug"),
    [
        ("Where a run's labelled data comes from", "where-a-runs-labelled-data-comes-from"),
        ("Shadow promotion (`IA_PROMOTE_ON=shadow`)", "shadow-promotion-ia_promote_onshadow"),
        ("GET /predictions/performance", "get-predictionsperformance"),
        (
            "Keyless mode: cross-site writes and DNS rebinding",
            "keyless-mode-cross-site-writes-and-dns-rebinding",
        ),
    ],
)
def test_slugs_follow_github(heading: str, slug: str) -> None:
    assert slugify(heading) == slug
