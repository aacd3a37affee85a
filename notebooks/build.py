"""Build the lesson notebooks from their Python sources: ``notebooks/src/*.py`` -> ``*.ipynb``.

The sources use the "percent" format (the one jupytext and VS Code read): ``# %%`` starts a
code cell, ``# %% [markdown]`` a markdown cell whose lines are comments, and
``# %% tags=["raises-exception"]`` a code cell with tags. Text before the first marker is a
note for editors and is not copied. Keeping lessons as Python gives readable diffs and lets
ruff check their code; the notebooks are written without outputs, with stable cell ids, so
building twice gives the same bytes.

    .venv/bin/python notebooks/build.py          # rebuild every notebook
    .venv/bin/python notebooks/build.py --check  # exit 1 if a notebook is out of date

Edit the source, not the ``.ipynb``: ``tests/lessons/test_notebooks.py`` fails when they disagree.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
SRC = HERE / "src"
_MARKER = re.compile(r"^# %%(?P<md> \[markdown\])?(?: tags=(?P<tags>\[.*\]))?\s*$")

KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def parse(text: str, stem: str) -> nbformat.NotebookNode:
    """A notebook (no outputs) from a percent-format source; cell ids are ``<stem>-<n>``."""
    cells: list[tuple[str, list[str], list[str]]] = []  # (kind, tags, lines)
    for line in text.splitlines():
        m = _MARKER.match(line)
        if m:
            tags = json.loads(m["tags"]) if m["tags"] else []
            cells.append(("markdown" if m["md"] else "code", tags, []))
        elif cells:
            cells[-1][2].append(line)
    nb = new_notebook(metadata={
        "kernelspec": dict(KERNELSPEC),
        "language_info": {"name": "python"},
    })
    for i, (kind, tags, lines) in enumerate(cells):
        body = _strip_blank(lines)
        if kind == "markdown":
            body = [_uncomment(ln) for ln in body]
            cell = new_markdown_cell("\n".join(body))
        else:
            cell = new_code_cell("\n".join(body))
            if "solution" in tags:
                cell.metadata["jupyter"] = {"source_hidden": True}  # folded until clicked
        if tags:
            cell.metadata["tags"] = tags
        cell.id = f"{stem.replace('_', '-')}-{i}"
        nb.cells.append(cell)
    return nb


def _uncomment(line: str) -> str:
    if line.startswith("# "):
        return line[2:]
    if line.rstrip() == "#":
        return ""
    raise ValueError(f"a markdown line must start with '# ' or be '#': {line!r}")


def _strip_blank(lines: list[str]) -> list[str]:
    while lines and not lines[0].strip():
        lines = lines[1:]
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return lines


def render(source: Path) -> str:
    """The ``.ipynb`` text for one source file (what is written to disk)."""
    nb = parse(source.read_text(), source.stem)
    nbformat.validate(nb)
    return nbformat.writes(nb) + "\n"


def targets() -> dict[Path, Path]:
    """Each source and the notebook built from it."""
    return {src: HERE / f"{src.stem}.ipynb" for src in sorted(SRC.glob("*.py"))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale notebooks")
    args = parser.parse_args(argv)
    stale = []
    for src, dest in targets().items():
        text = render(src)
        if dest.exists() and dest.read_text() == text:
            continue
        stale.append(dest.name)
        if not args.check:
            dest.write_text(text)
    if args.check and stale:
        print(f"out of date: {', '.join(stale)} (run: python notebooks/build.py)")
        return 1
    if not args.check:
        print(f"built {len(stale)} notebook(s); {len(targets()) - len(stale)} already current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
