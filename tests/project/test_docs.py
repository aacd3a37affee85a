"""The README and the pages in docs/ say only what the repository holds.

For README.md and every docs/*.md: each ``make TARGET`` it shows is a Makefile target, each
``python -m mahiax COMMAND`` a command of the CLI's parser, each repository path it names (in
backticks, in a code block or as a link) exists, and each relative link resolves. The module
map in docs/architecture.md names every module of mahiax/, dashboard/ and hub/, and only
those. The README stays short and links every docs page. A failure names the file, the line
and what is missing.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

# the checkout: the first folder above this file that holds the Makefile (this file may move
# into a subfolder of tests/)
ROOT = next(p for p in Path(__file__).resolve().parents if (p / "Makefile").is_file())
README = ROOT / "README.md"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
README_MAX_LINES = 160
# the top-level folders whose paths the pages name; a path under any other folder (runs/,
# build/, test-artifacts/: made at run time) is not checked
PATH_ROOTS = ("mahiax", "dashboard", "hub", "tests", "notebooks", "docs", "benchmarks",
              "examples")
MAP_PACKAGES = ("mahiax", "dashboard", "hub")


def doc_pages() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def _ids(pages: list[Path]) -> list[str]:
    return [str(p.relative_to(ROOT)) for p in pages]


# -- reading a page ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Span:
    """A piece of a page: its text, the line it starts on, and whether it is code (a fenced
    block's line or an inline code span)."""

    line: int
    text: str
    code: bool


_FENCE = re.compile(r"^\s*(```|~~~)")
_INLINE_CODE = re.compile(r"(`+)(.+?)\1")


def spans(text: str) -> list[Span]:
    """The page cut into code and prose: every line of a fenced block is code; elsewhere each
    inline code span is code and what lies between them is prose (line numbers from 1)."""
    out: list[Span] = []
    fence: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        m = _FENCE.match(line)
        if fence is not None:
            if m and m[1] == fence:
                fence = None
            else:
                out.append(Span(number, line, True))
            continue
        if m:
            fence = m[1]
            continue
        last = 0
        for c in _INLINE_CODE.finditer(line):
            out.append(Span(number, line[last:c.start()], False))
            out.append(Span(number, c[2].strip(), True))
            last = c.end()
        out.append(Span(number, line[last:], False))
    return out


_MAKE = re.compile(r"(?:^|[\s;&|(])make((?:\s+[^\s;&|)#]+)+)")


def make_targets(text: str) -> list[tuple[int, str]]:
    """(line, target) for each ``make ...`` command in the page's code: the first word after
    ``make`` that is neither an option nor a ``VAR=value``."""
    found = []
    for span in spans(text):
        if not span.code:
            continue
        for m in _MAKE.finditer(span.text):
            words = [w for w in m[1].split() if not w.startswith("-") and "=" not in w]
            if words and re.fullmatch(r"[A-Za-z][\w.-]*", words[0]):
                found.append((span.line, words[0]))
    return found


_CLI = re.compile(r"(?:-m\s+mahiax(?:\s+--)?|^mahiax)((?:\s+[A-Za-z][\w-]*)+)")


def cli_commands(text: str) -> list[tuple[int, list[str]]]:
    """(line, words) for each ``python -m mahiax WORDS`` (also under torchrun, and an inline
    span that starts with ``mahiax ``) in the page's code: the words up to the first option,
    path or punctuation."""
    found = []
    for span in spans(text):
        if span.code:
            found += [(span.line, m[1].split()) for m in _CLI.finditer(span.text.strip())]
    return found


_PATH = re.compile(r"(?<![\w./~<>-])((?:" + "|".join(PATH_ROOTS) + r")/[\w./*-]*)")
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REF_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)")


def repo_paths(text: str) -> list[tuple[int, str]]:
    """(line, path) for each repository path named in the page's code (inline or fenced),
    without what a sentence or a command adds after it (a full stop, ``:function``)."""
    found = []
    for span in spans(text):
        if span.code:
            for m in _PATH.finditer(span.text):
                path = m[1].rstrip(".,;")
                found.append((span.line, path))
    return found


def links(text: str) -> list[tuple[int, str]]:
    """(line, target) for each Markdown link in the page's prose, inline or reference-style."""
    found = []
    for span in spans(text):
        if not span.code:
            found += [(span.line, m[1]) for m in _LINK.finditer(span.text)]
            found += [(span.line, m[1]) for m in _REF_LINK.finditer(span.text)]
    return found


def is_external(target: str) -> bool:
    return bool(re.match(r"[a-z][a-z0-9+.-]*:", target)) or target.startswith("#")


def path_exists(path: str, base: Path = ROOT) -> bool:
    """Whether ``path`` (relative to ``base``; ``*`` globs) names a file or folder."""
    path = path.split("#", 1)[0]
    if "*" in path:
        return any(base.glob(path))
    return (base / path).exists()


# -- what the repository has ------------------------------------------------------------------


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w.-]*)\s*:(?!=)", text, re.M))


def cli_tree() -> dict[str, set[str]]:
    """The CLI's commands, each with its subcommands (empty when it has none), from the
    parser mahiax/cli.py builds."""
    from mahiax.cli import build_parser

    def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                return dict(action.choices)
        return {}

    return {name: set(subparsers(p)) for name, p in subparsers(build_parser()).items()}


def tree_modules() -> set[str]:
    """Every .py module under mahiax/, dashboard/ and hub/, as a path from the root."""
    found = set()
    for package in MAP_PACKAGES:
        for p in (ROOT / package).rglob("*.py"):
            if "__pycache__" not in p.parts:
                found.add(p.relative_to(ROOT).as_posix())
    return found


# -- the extraction, checked on a page made up for it -----------------------------------------

SAMPLE = """\
# A page

Run `make dashboard` (or `make dashboard STREAMLIT_ARGS="--server.port 8600"`), to make sure.
See [the store](store.md#schema), [PyTorch](https://pytorch.org) and `mahiax/store/`.
`examples/my_loop.py:train_step`, `notebooks/src/*.py`, the file `mahiax/cli.py`.
Not paths: `test-artifacts/hub/x.json`, `<server>/mahiax-dashboard/`, `~/runs/m.sqlite`.

```bash
MAHIAX_HUB_PASSWORD='x' make hub   # a comment
.venv/bin/torchrun --nproc-per-node 2 -m mahiax -- train --steps 3
.venv/bin/python -m mahiax bugs verdict retain-graph  # [not](a-link.md)
```

`mahiax runs list` and `python -m mahiax --help`; from mahiax import doctor.
"""


def test_the_extractors_find_what_a_page_shows_and_nothing_else():
    assert make_targets(SAMPLE) == [(3, "dashboard"), (3, "dashboard"), (9, "hub")]
    assert cli_commands(SAMPLE) == [(10, ["train"]), (11, ["bugs", "verdict", "retain-graph"]),
                                    (14, ["runs", "list"])]
    assert repo_paths(SAMPLE) == [(4, "mahiax/store/"), (5, "examples/my_loop.py"),
                                  (5, "notebooks/src/*.py"), (5, "mahiax/cli.py")]
    assert links(SAMPLE) == [(4, "store.md#schema"), (4, "https://pytorch.org")]
    assert is_external("https://pytorch.org") and is_external("#schema")
    assert not is_external("store.md#schema")
    assert path_exists("notebooks/src/*.py") and not path_exists("notebooks/src/*.nothing")


# -- the pages --------------------------------------------------------------------------------


@pytest.mark.parametrize("page", doc_pages(), ids=_ids(doc_pages()))
def test_every_make_target_shown_is_in_the_makefile(page):
    targets = makefile_targets()
    assert {"test", "dashboard"} <= targets, "the Makefile scan finds the targets"
    name = page.relative_to(ROOT)
    missing = [f"{name}:{line}: `make {t}` is not a target of the Makefile"
               for line, t in make_targets(page.read_text()) if t not in targets]
    assert not missing, "\n".join(missing) + f"\n(targets: {', '.join(sorted(targets))})"


@pytest.mark.parametrize("page", doc_pages(), ids=_ids(doc_pages()))
def test_every_mahiax_command_shown_is_one_the_cli_has(page):
    tree = cli_tree()
    assert {"train", "runs", "bugs", "doctor"} <= set(tree), "the parser scan finds commands"
    name = page.relative_to(ROOT)
    wrong = []
    for line, words in cli_commands(page.read_text()):
        command, *rest = words
        if command not in tree:
            wrong.append(f"{name}:{line}: `mahiax {command}` is not a command of mahiax/cli.py "
                         f"(commands: {', '.join(sorted(tree))})")
        elif tree[command] and rest and rest[0] not in tree[command]:
            wrong.append(f"{name}:{line}: `mahiax {command} {rest[0]}` is not a subcommand "
                         f"(subcommands: {', '.join(sorted(tree[command]))})")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("page", doc_pages(), ids=_ids(doc_pages()))
def test_every_repository_path_named_exists(page):
    name = page.relative_to(ROOT)
    missing = []
    for line, path in repo_paths(page.read_text()):
        if not path_exists(path):
            missing.append(f"{name}:{line}: `{path}` does not exist in the repository")
    assert not missing, "\n".join(missing)


@pytest.mark.parametrize("page", doc_pages(), ids=_ids(doc_pages()))
def test_every_relative_link_resolves(page):
    name = page.relative_to(ROOT)
    broken = [f"{name}:{line}: the link ({target}) leads to nothing "
              f"(resolved from {page.parent.relative_to(ROOT) or '.'}/)"
              for line, target in links(page.read_text())
              if not is_external(target) and not path_exists(target, page.parent)]
    assert not broken, "\n".join(broken)


def test_readme_is_short():
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, \
        f"README.md: {lines} lines, at most {README_MAX_LINES}: move detail to a docs/ page"


def test_readme_links_every_docs_page():
    linked = {(ROOT / t.split("#", 1)[0]).resolve()
              for _, t in links(README.read_text()) if not is_external(t)}
    orphans = [f"README.md: no link to {p.relative_to(ROOT)}"
               for p in sorted((ROOT / "docs").glob("*.md")) if p.resolve() not in linked]
    assert not orphans, "\n".join(orphans)


def test_the_module_map_names_every_module_and_only_those():
    named: dict[str, int] = {}
    for line, path in repo_paths(ARCHITECTURE.read_text()):
        if path.endswith(".py") and path.split("/", 1)[0] in MAP_PACKAGES:
            named.setdefault(path, line)
    modules = tree_modules()
    assert "mahiax/cli.py" in modules and "dashboard/streamlit_app.py" in modules
    unnamed = [f"docs/architecture.md: the module map does not name `{m}`"
               for m in sorted(modules - set(named))]
    stale = [f"docs/architecture.md:{line}: `{m}` is in the module map but not in the tree"
             for m, line in sorted(named.items()) if m not in modules]
    assert not unnamed + stale, "\n".join(unnamed + stale)
