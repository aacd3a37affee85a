"""Measurements live in ``make bench`` results, not in docstrings or comments (issue 26).

A time quoted in the code's text ("one reading takes 0.8 ms", "10-16x slower") goes stale
the day the code or the machine changes, and nothing tells. The code's text says *why* it is
the way it is and names the bench row that measures it (``make bench``, row ``telemetry``);
the figure is read in ``benchmarks/results/latest.md``. Goals, defaults and units are not
matched here: only times and speed ratios, the figures that drift.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("mahiax", "dashboard", "hub")

# a duration (12 ms, 0.8 µs, 30 us, 5 ns), a speed ratio said as one ("5x faster", "3 times
# slower", "faster by 1.4"), or a range of ratios ("10-16x")
FIGURE = re.compile(
    r"\d(?:[\d.,]*\d)?\s?(?:ms|µs|us|ns)\b"
    r"|\d(?:[\d.]*\d)?\s?(?:x|×|times)\s+(?:faster|slower)"
    r"|(?:faster|slower) by (?:~\s?)?\d"
    r"|\d(?:[\d.]*\d)?\s?[-–]\s?\d(?:[\d.]*\d)?\s?(?:x|×)(?![\w-])")

# (path, a piece of the line) -> why the figure may stay. Only figures that are not this
# code's measurement of itself.
ALLOWED: dict[tuple[str, str], str] = {
    ("mahiax/telemetry/spikes.py", "~2 µs per allocation"):
        "PyTorch's documentation's figure for its own Python stack collection, quoted as such",
}


def texts(source: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of every docstring (module, class, function) and comment."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                doc = body[0].value
                for i, line in enumerate(doc.value.splitlines()):
                    yield doc.lineno + i, line
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            yield tok.start[0], tok.string


def stale_figures(path: Path, relative: str) -> list[str]:
    """``file:line: text`` for each measured time or speed ratio in ``path``'s docstrings and
    comments that the allow-list does not name."""
    found = []
    for line_no, line in texts(path.read_text(encoding="utf-8")):
        if FIGURE.search(line) and not any(
                file == relative and piece in line for file, piece in ALLOWED):
            found.append(f"{relative}:{line_no}: {line.strip()}")
    return found


def test_no_measured_time_in_docstrings_or_comments():
    found = []
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            found += stale_figures(path, path.relative_to(ROOT).as_posix())
    assert not found, (
        "measured figures belong in `make bench` results (benchmarks/results/latest.md): say "
        "why instead and name the row, e.g. (figure: `make bench`, row `telemetry`):\n"
        + "\n".join(found))


def test_the_scan_finds_a_figure_in_a_docstring_and_a_comment(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('"""Fast.\n\nOne reading takes 0.65-0.95 ms."""\n\n'
                      "def f():\n"
                      '    """The doctor: 10-16x on the tiny step."""\n'
                      "    return 1  # a set lookup is ~5x faster than isinstance\n"
                      "# flushes every 0.5 s; goal <= 1.03; 4 x 200 points; 1e-7\n")
    assert stale_figures(sample, "sample.py") == [
        "sample.py:3: One reading takes 0.65-0.95 ms.",
        "sample.py:6: The doctor: 10-16x on the tiny step.",
        "sample.py:7: # a set lookup is ~5x faster than isinstance",
    ]


def test_every_allowed_figure_is_still_there():
    """An allow-list entry whose line is gone would let the next figure in unseen."""
    for (file, piece), reason in ALLOWED.items():
        assert reason
        assert piece in (ROOT / file).read_text(encoding="utf-8"), (file, piece)
