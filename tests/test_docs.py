"""The documentation holds together: every relative link and image points to a file that exists, every
`#anchor` matches a heading of its target (GitHub's slugs), and the README and the model card stay short."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README_WORDS = 1500  # a newcomer reads it in five minutes
CARD_BYTES = 10_500  # a card, not an experiment log (that lives in docs/experiments.md)

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"", re.IGNORECASE)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # http:, https:, mailto:, ...


GENERATED = {"bench.md", "compare.md"}  # reports `feredge bench` writes; their plots are not always kept
SKIPPED_DIRS = {".git", ".venv", "build", ".pytest_cache", "runs", "bundles"}


def documents() -> list[Path]:
    """Every hand-written Markdown file of the repository: README, guides, card, results notes."""
    return sorted(p for p in REPO.rglob("*.md") if p.name not in GENERATED
                  and not SKIPPED_DIRS & set(p.relative_to(REPO).parts[:-1]) and "egg-info" not in str(p))


def prose_lines(text: str):
    """(line number, line) outside fenced code blocks, with inline code spans blanked out."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, re.sub(r"(`+)(?:(?!\1).)+?\1", "", line)


def links(text: str) -> list[tuple[int, str]]:
    found = []
    for number, line in prose_lines(text):
        found += [(number, m.group(1)) for m in INLINE_LINK.finditer(line)]
        reference = REFERENCE_LINK.match(line)
        if reference:
            found.append((number, reference.group(1)))
    return found


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lowercase, punctuation other than '-' and '_'
    removed, each space a '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor a Markdown file offers: its headings' slugs (repeats get -1, -2, ...) and HTML anchors."""
    seen: dict[str, int] = {}
    found = set()
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        heading = HEADING.match(line)
        if heading:
            base = slug(heading.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
        found.update(HTML_ANCHOR.findall(line))
    return found


def broken_links(doc: Path, root: Path = REPO) -> list[str]:
    problems = []
    text = doc.read_text(encoding="utf-8")
    for number, target in links(text):
        if not target or EXTERNAL.match(target):
            continue
        path_part, _, anchor = target.partition("#")
        path_part = path_part.split("?", 1)[0]
        resolved = (doc.parent / path_part).resolve() if path_part else doc
        where = f"{doc.relative_to(root)}:{number}: {target}"
        if not resolved.exists():
            problems.append(f"{where}: no such file")
            continue
        if anchor:
            if resolved.suffix.lower() != ".md" or not resolved.is_file():
                problems.append(f"{where}: an anchor into something that is not a Markdown file")
            elif anchor.lower() not in anchors(resolved.read_text(encoding="utf-8")):
                problems.append(f"{where}: no heading with the anchor #{anchor}")
    return problems


@pytest.mark.parametrize("doc", documents(), ids=lambda d: str(d.relative_to(REPO)))
def test_every_relative_link_and_anchor_resolves(doc):
    assert broken_links(doc) == []


def test_the_guides_exist_and_the_readme_links_each_of_them():
    readme = {target.split("#")[0] for _, target in links((REPO / "README.md").read_text(encoding="utf-8"))}
    for guide in ("training", "export", "runtime", "benchmarks", "devices", "design", "experiments"):
        assert (REPO / "docs" / f"{guide}.md").is_file(), guide
        assert f"docs/{guide}.md" in readme, guide
    assert "models/pretrained/MODEL_CARD.md" in readme


def test_readme_stays_short():
    words = len((REPO / "README.md").read_text(encoding="utf-8").split())
    assert words <= README_WORDS, f"README.md has {words} words; move detail into docs/ (budget {README_WORDS})"


def test_model_card_stays_a_card():
    size = (REPO / "models" / "pretrained" / "MODEL_CARD.md").stat().st_size
    assert size <= CARD_BYTES, f"MODEL_CARD.md is {size} bytes; history belongs in docs/experiments.md"


def test_the_readme_and_the_guides_link_to_nothing_outside_the_repository_checkout():
    for doc in documents():
        for _, target in links(doc.read_text(encoding="utf-8")):
            if target and not EXTERNAL.match(target) and target.split("#")[0]:
                resolved = (doc.parent / target.split("#")[0]).resolve()
                assert REPO in resolved.parents or resolved == REPO, f"{doc.relative_to(REPO)}: {target}"


def test_the_checker_finds_broken_links_and_anchors(tmp_path):
    (tmp_path / "guide.md").write_text("# A guide\n\n## Int8 on every CPU\n\n## Int8 on every CPU\n"
                                       "### Export: `feredge export` (and more)\n")
    doc = tmp_path / "README.md"
    doc.write_text("[ok](guide.md#int8-on-every-cpu) [ok](guide.md#int8-on-every-cpu-1) "
                   "[ok](guide.md#export-feredge-export-and-more) ![img](guide.md) [web](https://example.com)\n"
                   "`[in code](missing.md)`\n```\n[in a fence](missing.md)\n```\n"
                   "[gone](missing.md) [no heading](guide.md#nothing) [self](#a-readme)\n\n# A readme\n")
    problems = broken_links(doc, tmp_path)
    assert len(problems) == 2, problems
    assert "missing.md: no such file" in problems[0] and "#nothing" in problems[1]


def test_slugs_follow_github():
    assert slug("Toward 70 %: what was tried after the first `edge` model") == \
        "toward-70--what-was-tried-after-the-first-edge-model"
    assert slug("The shipped model's lineage") == "the-shipped-models-lineage"
    assert slug("Keras 2 (tf-keras), not Keras 3") == "keras-2-tf-keras-not-keras-3"
    assert slug("snake_case and [a link](x.md)") == "snake_case-and-a-link"
