"""Two rules every lesson keeps, as functions the notebook tests apply (and unit-test).

- **Predict, then measure, then check.** The code a ``**Predict.**`` prompt asks about (the
  code cells after it, up to the next markdown cell) shows what happens; it does not state
  what will happen. :func:`predict_giveaways` lists what in such a cell names its answer: an
  ``assert``, an expected error (``expect_error``, ``Caught.expect``, ``pytest.raises``), a
  comment, a printed string or a variable name that says the outcome. Checks belong in a
  cell after the reveal.
- **Figures in prose are bound to cells.** :func:`unbound_figures` lists the numbers a
  markdown cell states that no code cell's source or output of the executed notebook
  contains, so a change of code cannot leave the prose behind. A stated decimal is bound
  when a printed number rounds to it (``0.62`` is bound by ``0.6234``); ``65,536`` is the
  number ``65536``.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterable, Sequence

PREDICT = "**Predict.**"

# calls that name the outcome they expect
_EXPECTING_CALLS = {"expect_error", "expect", "raises", "assertRaises"}
# words that, in a comment or a printed literal of a measured cell, tell the outcome
_OUTCOME_WORDS = re.compile(
    r"\b(raises?|raised|fails?|failed|passes|passed|expected|expect(?:s|ing)?|should|"
    r"grows?|growing|flat|unchanged|no error|same error)\b",
    re.IGNORECASE,
)


def _text(cell: dict) -> str:
    src = cell["source"]
    return "".join(src) if isinstance(src, list) else src


def _giveaways_in_code(code: str) -> list[str]:
    """What in one code cell's source names an outcome: asserts, expecting calls, and
    comments, string literals and names (``growing``, ``flat_graph``) with an outcome word."""
    found: list[str] = []
    try:
        tree = ast.parse(code)
    except SyntaxError:  # IPython magics: the comments are still read below
        tree = None
    if tree is not None:
        for node in ast.walk(tree):
            if isinstance(node, ast.Assert):
                found.append(f"line {node.lineno}: an assert")
            elif isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name in _EXPECTING_CALLS:
                    found.append(f"line {node.lineno}: {name}(...) names the expected outcome")
            elif isinstance(node, ast.Name | ast.arg) and any(
                    _OUTCOME_WORDS.fullmatch(part)
                    for part in (getattr(node, "id", None) or node.arg).split("_")):
                name = getattr(node, "id", None) or node.arg
                found.append(f"line {node.lineno}: the name {name!r}")
            elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
                  and _OUTCOME_WORDS.search(node.value)):
                found.append(f"line {node.lineno}: the string {node.value[:50]!r}")
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(code).readline))
    except (tokenize.TokenError, IndentationError):
        tokens = []
    for tok in tokens:
        if tok.type == tokenize.COMMENT and _OUTCOME_WORDS.search(tok.string):
            found.append(f"line {tok.start[0]}: the comment {tok.string[:60]!r}")
    return found


def predict_giveaways(cells: Sequence[dict]) -> list[str]:
    """Where a lesson's measured cell (the code after a ``**Predict.**`` prompt, up to the
    next markdown cell) names its answer: an empty list when none does."""
    problems: list[str] = []
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "markdown" or PREDICT not in _text(cell):
            continue
        for j in range(i + 1, len(cells)):
            if cells[j]["cell_type"] == "markdown":
                break
            for found in _giveaways_in_code(_text(cells[j])):
                problems.append(f"cell {j} (measured for the Predict in cell {i}): {found}")
    return problems


# ---- markdown left in a code cell ---------------------------------------------------------

# a comment line that is markdown: a heading, a bold lead-in (**Predict.**), a blockquote
# (> **Reconstruction.**), an HTML fold; in a lesson source such lines follow a ``# %%``
# inserted into a markdown cell without a ``# %% [markdown]`` after it
_MARKDOWN_COMMENT = re.compile(r"^#\s+(?:#{1,6}\s|\*\*\w|>\s|<details>|</details>)")


def markdown_in_code(cells: Sequence[dict]) -> list[str]:
    """Code cells holding comment lines that are markdown (which then never render): an
    empty list when there are none."""
    problems: list[str] = []
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        lines = _text(cell).splitlines()
        for n, line in enumerate(lines, start=1):
            # a markdown line, or an empty "#" line opening a paragraph of comment lines
            # (how a markdown cell's blank line reads once it is left in a code cell)
            opens = line == "#" and n < len(lines) and lines[n].startswith("# ")
            if _MARKDOWN_COMMENT.match(line) or opens:
                problems.append(f"cell {i} line {n}: {(lines[n] if opens else line)[:60]!r}")
    return problems


# ---- figures -----------------------------------------------------------------------------

# a number standing alone: not part of a name (float16, 03a, x2), commas as thousands
_NUMBER = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?:e-?\d+)?(?![\w])")
_LINK_TARGET = re.compile(r"\]\([^)]*\)|https?://\S+")
# a section or list number, or a lesson's own number in its title ("# 11 · Router ...")
_HEADING_OR_ITEM = re.compile(r"^\s*(?:#+\s*)?\d+[a-z]?(?:[.)]|\s·)\s", re.MULTILINE)
_CODE_SPAN = re.compile(r"`[^`]*`")
# not figures of a measurement: issue numbers, versions, years (this project writes figures
# of four digits with a comma: 2,048), and the time a lesson takes in class
_NOT_FIGURES = re.compile(
    r"#\d+|\b(?:torch|PyTorch|Python|CUDA|version)\s+\d+(?:\.\d+)*|(?<![\d,.])(?:19|20)\d\d(?!\d|,\d)"
    r"|\b\d+(?:-\d+)?\s+minutes\b", re.IGNORECASE)
_DIGIT_GROUPS = re.compile(r"(?<=\d)_(?=\d)")  # Python's 10_000
_PERCENT = re.compile(r"\s?%")


def _numbers(text: str) -> list[str]:
    return [m.group(0) for m in _NUMBER.finditer(text)]


def _value(token: str) -> float:
    return float(token.replace(",", ""))


def _decimals(token: str) -> int | None:
    """Decimal places a stated number is given to (None for a power-of-ten form)."""
    if "e" in token:
        return None
    return len(token.split(".")[1]) if "." in token else 0


def _prose_figures(markdown: str) -> list[str]:
    """The numbers a markdown cell states as figures (a percentage keeps its ``%``): not
    link targets, section or list numbers, code spans (code is bound by the code itself),
    issue numbers, versions, years or a lesson's time in class."""
    text = _LINK_TARGET.sub(" ", markdown)
    text = _HEADING_OR_ITEM.sub(" ", text)
    text = _CODE_SPAN.sub(" ", text)
    text = _NOT_FIGURES.sub(" ", text)
    return [m.group(0) + ("%" if _PERCENT.match(text, m.end()) else "")
            for m in _NUMBER.finditer(text)]


def _bound(token: str, known: set[float]) -> bool:
    """Is a stated figure among the known numbers? A percentage is bound by itself or by
    its fraction (``90 %`` by ``0.9``)."""
    if token.endswith("%"):
        number = token[:-1]
        places = _decimals(number) or 0
        fraction = round(_value(number) / 100, places + 2)
        return _bound(number, known) or any(round(k, places + 2) == fraction for k in known)
    value = _value(token)
    places = _decimals(token)
    if places is None:
        return any(abs(k - value) <= abs(value) * 0.05 for k in known)
    return any(round(k, places) == value for k in known)


def unbound_figures(cells: Sequence[dict], also_known: Iterable[str] = ()) -> list[str]:
    """The figures markdown cells state that no code cell's source or text output contains
    (``also_known``: further text whose numbers count as bound, e.g. the user's summary,
    which the lessons quote). Call on an executed notebook."""
    known_text: list[str] = list(also_known)
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        known_text.append(_text(cell))
        for out in cell.get("outputs", []):
            known_text.append(out.get("text", "") if isinstance(out.get("text"), str)
                              else "".join(out.get("text", [])))
            data = out.get("data", {})
            for mime in ("text/plain", "text/markdown", "text/html"):
                value = data.get(mime, "")
                known_text.append(value if isinstance(value, str) else "".join(value))
            if out.get("output_type") == "error":
                known_text.append(f"{out.get('ename', '')}: {out.get('evalue', '')}")
    known = {_value(t) for text in known_text for t in _numbers(_DIGIT_GROUPS.sub("", text))}
    problems: list[str] = []
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "markdown":
            continue
        for token in _prose_figures(_text(cell)):
            if not _bound(token, known):
                problems.append(f"cell {i}: {token}")
    return problems
