"""The documentation holds together: README.md is a front page and docs/ has one page per topic.

Every relative link in README.md and docs/*.md resolves to a file of the checkout, and its
``#anchor`` to a heading of the target (GitHub's slugs); README.md stays short; every docs page is
linked from README.md or docs/README.md.
"""

import glob
import os
import re

import pytest

from tests.helpers import REPO

README = os.path.join(REPO, "README.md")
DOCS = os.path.join(REPO, "docs")
MAX_README_LINES = 260

# [text](target) and ![alt](target); the target ends at whitespace or ")", an optional title follows.
_LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_FENCE = re.compile(r"^\s*(```|~~~)")


def _pages() -> list[str]:
    return [README] + sorted(glob.glob(os.path.join(DOCS, "*.md")))


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # links keep their text
    text = text.replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)  # keeps letters, digits, '_' and '-'
    return text.replace(" ", "-")


def anchors(path: str) -> set[str]:
    """Every heading anchor of a markdown file, with GitHub's -1, -2, ... for repeated headings."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    seen: dict[str, int] = {}
    result = set()
    for _, line in _prose_lines(text):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def links(path: str) -> list[tuple[int, str]]:
    """(line number, target) of every link in a markdown file, code blocks and spans excluded."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    found = []
    for number, line in _prose_lines(text):
        line = re.sub(r"`[^`]*`", "", line)
        found.extend((number, target) for target in _LINK.findall(line))
    return found


def broken_links(path: str) -> list[str]:
    """Every relative link of ``path`` whose file or #anchor does not exist, as 'file:line: target'."""
    problems = []
    for number, target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.I):  # https:, mailto:, ...
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (os.path.normpath(os.path.join(os.path.dirname(path), file_part))
                    if file_part else path)
        where = f"{os.path.relpath(path, REPO)}:{number}: {target}"
        if not os.path.exists(resolved):
            problems.append(f"{where} (no file {os.path.relpath(resolved, REPO)})")
        elif anchor and not (resolved.endswith(".md") and anchor in anchors(resolved)):
            problems.append(f"{where} (no heading with anchor #{anchor})")
    return problems


@pytest.mark.parametrize("page", [os.path.relpath(p, REPO) for p in _pages()])
def test_relative_links_resolve(page):
    assert broken_links(os.path.join(REPO, page)) == []


def test_readme_is_a_front_page():
    with open(README, encoding="utf-8") as f:
        count = len(f.read().splitlines())
    assert count <= MAX_README_LINES, f"README.md has {count} lines; move detail to docs/"


def test_every_docs_page_is_linked_from_an_index():
    linked = set()
    for index in (README, os.path.join(DOCS, "README.md")):
        for _, target in links(index):
            file_part = target.partition("#")[0]
            if file_part:
                linked.add(os.path.normpath(os.path.join(os.path.dirname(index), file_part)))
    pages = [p for p in glob.glob(os.path.join(DOCS, "*.md")) if os.path.basename(p) != "README.md"]
    assert pages
    assert sorted(os.path.relpath(p, REPO) for p in pages if os.path.normpath(p) not in linked) == []


def test_the_checks_catch_bad_links(tmp_path):
    (tmp_path / "target.md").write_text("# A title: with `code` and (parens)\n\n## Same\n\n## Same\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](target.md) [ok](target.md#a-title-with-code-and-parens) [ok](target.md#same-1)\n"
        "[ok](#local) [ok](https://example.com/x.md#nowhere)\n"
        "## Local\n"
        "```\n[in code](missing.md)\n```\n"
        "[bad file](missing.md) ![bad image](img/none.png)\n"
        "[bad anchor](target.md#no-such-heading) [bad local](#nowhere)\n")
    problems = broken_links(str(page))
    assert len(problems) == 4, problems
    assert [p.split(": ", 1)[1].split(" ")[0] for p in problems] == [
        "missing.md", "img/none.png", "target.md#no-such-heading", "#nowhere"]


def test_slugs_follow_github():
    assert slug("Quick start (fresh machine)") == "quick-start-fresh-machine"
    assert slug("Tasks computed together (`tasks_in_parallel`)") == \
        "tasks-computed-together-tasks_in_parallel"
    assert slug("Batch normalisation modes (`bn_mode`)") == "batch-normalisation-modes-bn_mode"
    assert slug("Memory of `tfmeta.adapt`") == "memory-of-tfmetaadapt"
    assert slug("Exporting and adapting: a SavedModel with the inner loop inside") == \
        "exporting-and-adapting-a-savedmodel-with-the-inner-loop-inside"
