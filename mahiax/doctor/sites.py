"""Where in the user's code: the calling frame outside torch, and the line that stores a name.

The doctor points at the line a learner must change. A wrapped call (``backward()``,
``clip_grad_norm_``) is located by the innermost frame outside torch, the doctor and the
mutation locator; a tensor held across steps by the statement that stores it, found by reading
the source of the code that holds it (the class of the module, the step function's file).
"""

from __future__ import annotations

import functools
import inspect
import linecache
import os
import re
import sys
import traceback
from types import FrameType, TracebackType
from typing import NamedTuple

from mahiax.telemetry.locator import _is_internal

_HERE = os.path.dirname(os.path.abspath(__file__))
# the doctor's own machinery; lesson 10's exercises (loops a learner would write) are not
MACHINERY = frozenset(
    os.path.join(_HERE, name) for name in os.listdir(_HERE)
    if name.endswith(".py") and not name.startswith("exercise")
)


class Site(NamedTuple):
    """A line of the user's code: where a call was made, a tensor built or a name stored.
    A named tuple, since callers unpack it (``file, line = site``), pass it on as arguments
    (``code_text(*site)``), compare it with other places and keep it in sets."""

    file: str  # "" when no line of the user's was found
    line: int  # 1-based; 0 with no file


NO_SITE = Site("", 0)  # no line of the user's was found


class Frame(NamedTuple):
    """One frame of the user's own code in a chain of calls (from :func:`user_frames`). A
    named tuple, since callers unpack it in loops over the chain."""

    code: object  # the frame's code object: tells the same function apart in two chains
    file: str
    line: int  # the line the frame was running


class Store(NamedTuple):
    """A line that stores into a name (from :func:`class_stores`). A named tuple, since
    callers unpack it and compare its place with a :class:`Site`."""

    file: str
    line: int
    setup: bool  # in a ``def __init__`` or at module top level: setup code, not the step


@functools.cache
def internal(path: str) -> bool:
    """A frame the user did not write: torch, the doctor's machinery, the locator."""
    return _is_internal(path) or os.path.abspath(path) in MACHINERY


def user_site(frame: FrameType | None = None) -> Site:
    """The line of the innermost frame outside torch and the doctor."""
    f = frame if frame is not None else sys._getframe(1)
    while f is not None:
        if not internal(f.f_code.co_filename):
            return Site(f.f_code.co_filename, f.f_lineno)
        f = f.f_back
    return NO_SITE


def user_frames(frame: FrameType | None = None) -> list[Frame]:
    """Every frame outside torch and the doctor, innermost first: the chain of the user's
    own calls that led here."""
    f = frame if frame is not None else sys._getframe(1)
    out = []
    while f is not None:
        if not internal(f.f_code.co_filename):
            out.append(Frame(f.f_code, f.f_code.co_filename, f.f_lineno))
        f = f.f_back
    return out


def common_caller(first: list[Frame], second: list[Frame]) -> Site | None:
    """The innermost function that both chains of calls (from :func:`user_frames`) run
    through, and its line in ``first``: e.g. the function that called ``model.eval()`` and
    also ran the evaluation's forward."""
    codes = {f.code for f in second}
    for f in first:
        if f.code in codes:
            return Site(f.file, f.line)
    return None


_GRAD_OFF = ("no_grad", "inference_mode", "set_grad_enabled(False)")


@functools.cache
def _grad_off_in(code: object, line: int) -> int:
    """The line of ``code``'s function (a decorator, or a ``with`` around ``line``) that
    turns autograd off, or 0."""
    file = code.co_filename  # type: ignore[attr-defined]
    first = code.co_firstlineno  # type: ignore[attr-defined]  # the first decorator's line
    lines = linecache.getlines(file)
    if not 0 < line <= len(lines):
        return 0
    n = first
    while n <= len(lines) and lines[n - 1].lstrip().startswith("@"):
        if any(g in lines[n - 1] for g in _GRAD_OFF):
            return n
        n += 1
    indent = len(lines[line - 1]) - len(lines[line - 1].lstrip())
    for k in range(line - 1, first - 1, -1):
        text = lines[k - 1]
        stripped = text.lstrip()
        if not stripped or stripped.startswith("#"):
            continue
        level = len(text) - len(stripped)
        if level < indent:
            if stripped.startswith("with ") and any(g in stripped for g in _GRAD_OFF):
                return k
            indent = level
    return 0


def grad_off_site(frames: list[Frame]) -> Site | None:
    """Where the user's code turned autograd off around the calls in ``frames`` (from
    :func:`user_frames`): a ``with torch.no_grad()`` / ``inference_mode()`` block or such a
    decorator, innermost first; None when none of them did."""
    for f in frames:
        found = _grad_off_in(f.code, f.line)
        if found:
            return Site(f.file, found)
    return None


def traceback_site(tb: TracebackType | None) -> Site:
    """The innermost user frame of a traceback: the user's line that raised."""
    best = NO_SITE
    for frame, line in traceback.walk_tb(tb):
        if not internal(frame.f_code.co_filename):
            best = Site(frame.f_code.co_filename, line)
    return best


_COMPARE = re.compile(r"[=!<>]=")
_NUMBERS = re.compile(r"\.(item|detach|tolist)\(\)|\bfloat\(")
_EMPTY = re.compile(r"=\s*(\[\s*\]|\{\s*\}|list\(\s*\)|dict\(\s*\)|\(\s*\)|None)\s*$")


def _stores(text: str, name: str, attribute: bool) -> bool:
    """Does this line of code store into ``name`` (``x = ``, ``x += ``, ``a, x = ``,
    ``x[i] = ``, ``x.append(``)? ``attribute``: ``name`` is ``obj.name``."""
    code = text.split("#", 1)[0]
    ref = rf"\.{re.escape(name)}\b" if attribute else rf"(?<![\w.]){re.escape(name)}\b"
    if re.search(ref + r"\s*\.\s*(append|extend|insert)\s*\(", code):
        return True
    if re.search(ref + r"(\s*\[[^\]]*\])?\s*\.\s*[a-z]\w*[a-z0-9]_\s*\(", code):
        return True  # an in-place tensor method on it or an entry: `x["k"].add_(v)`
    if re.search(r"register_buffer\(\s*['\"]" + re.escape(name) + "['\"]", code):
        return True
    masked = _COMPARE.sub("  ", code)
    if "=" not in masked:
        return False
    lhs = masked.split("=", 1)[0]
    lhs = lhs.rstrip("+-*/%@&|^ ")
    return re.search(ref, lhs) is not None


def storing_lines(file: str, name: str, attribute: bool,
                  span: tuple[int, int] | None = None) -> list[tuple[int, bool]]:
    """Lines of ``file`` (within ``span``, inclusive) that store into ``name``, each with
    whether it sits in an ``__init__`` or at module top level (setup, not the step)."""
    lines = linecache.getlines(file)
    lo, hi = span if span is not None else (1, len(lines))
    found: list[tuple[int, bool]] = []
    for n in range(lo, min(hi, len(lines)) + 1):
        text = lines[n - 1]
        if _stores(text, name, attribute):
            found.append((n, _in_setup(lines, n)))
    return found


def stores_at(file: str, line: int, name: str, attribute: bool) -> bool:
    """Does ``file:line`` store into ``name``?"""
    return _stores(linecache.getline(file, line), name, attribute) if file and line else False


def _in_setup(lines: list[str], n: int) -> bool:
    """Is line ``n`` at module top level or inside a ``def __init__``?"""
    text = lines[n - 1]
    indent = len(text) - len(text.lstrip())
    if indent == 0:
        return True
    for k in range(n - 2, -1, -1):
        above = lines[k]
        stripped = above.lstrip()
        if not stripped or stripped.startswith("#"):
            continue
        level = len(above) - len(stripped)
        if level < indent and stripped.startswith(("def ", "async def ")):
            return stripped.startswith("def __init__")
        if level == 0:
            return False
    return False


def source_span(obj: object) -> tuple[str, tuple[int, int]] | None:
    """``(file, (first, last))`` of a class's or function's source, or None."""
    try:
        file = inspect.getsourcefile(obj)  # type: ignore[arg-type]
        lines, start = inspect.getsourcelines(obj)  # type: ignore[arg-type]
    except (TypeError, OSError):
        return None
    if file is None:
        return None
    return file, (max(start, 1), max(start, 1) + len(lines) - 1)


def pick_store(candidates: list[Store], built: Site | None) -> Site | None:
    """The line to name among storing lines: the one where the held tensor was built if it
    is one of them, else the first outside setup code, else where it was built."""
    if built is not None and any((c.file, c.line) == built for c in candidates):
        return built
    # a line that only makes the empty container (`xs = []`), or that already keeps numbers
    # (`xs.append(loss.item())`, `h = h.detach()`), cannot be what put a graph there
    candidates = [c for c in candidates if not _EMPTY.search(code_text(c.file, c.line))
                  and not _NUMBERS.search(code_text(c.file, c.line))] or candidates
    for c in candidates:
        if not c.setup:
            return Site(c.file, c.line)
    if built is not None:
        return built
    return Site(candidates[0].file, candidates[0].line) if candidates else None


def class_stores(cls: type, name: str) -> list[Store]:
    """Storing lines of attribute ``name`` in ``cls`` and its bases outside torch."""
    found: list[Store] = []
    for klass in cls.__mro__:
        if klass is object or internal(getattr(sys.modules.get(klass.__module__), "__file__",
                                               "") or ""):
            continue
        where = source_span(klass)
        if where is None:
            continue
        file, span = where
        found.extend(Store(file, n, setup)
                     for n, setup in storing_lines(file, name, True, span))
    return found


def setup_store(cls: type, name: str, avoid: tuple[str, ...] = ()) -> Site:
    """The line of ``cls`` that sets attribute ``name`` up (in ``__init__`` first), skipping
    lines whose code contains one of ``avoid`` (the other branch of an ``if``: the line that
    registers it properly); ``("", 0)`` when none."""
    candidates = class_stores(cls, name)
    setup = [c for c in candidates if c.setup] or candidates
    fitting = [c for c in setup if not any(a in code_text(c.file, c.line) for a in avoid)]
    best = next(iter(fitting or setup), None)
    return Site(best.file, best.line) if best is not None else NO_SITE


def line_text(file: str, line: int) -> str:
    """The stripped source text of ``file:line`` ("" if unavailable)."""
    return linecache.getline(file, line).strip() if file and line else ""


def code_text(file: str, line: int) -> str:
    """The stripped code of ``file:line`` without a trailing comment ("" if unavailable)."""
    return _strip_comment(line_text(file, line))


def _strip_comment(text: str) -> str:
    """``text`` without a trailing ``# comment`` (a ``#`` inside a string literal stays)."""
    quote = ""
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#":
            return text[:i].rstrip()
    return text


def target_of(text: str, name: str, attribute: bool) -> str:
    """The expression a storing line assigns ``name`` through: ``self.h`` in
    ``out, self.h = cell(x, self.h)``; ``name`` itself for a variable."""
    if not attribute:
        return name
    lhs = _COMPARE.sub("  ", text).split("=", 1)[0]
    m = re.search(rf"([A-Za-z_][\w.]*)\.{re.escape(name)}\b", lhs)
    return f"{m.group(1)}.{name}" if m else f"<object>.{name}"


def in_loop(file: str, line: int) -> bool:
    """Is line ``line`` inside a ``for``/``while`` of its own function?"""
    lines = linecache.getlines(file)
    if not 0 < line <= len(lines):
        return False
    indent = len(lines[line - 1]) - len(lines[line - 1].lstrip())
    for k in range(line - 2, -1, -1):
        above = lines[k]
        stripped = above.lstrip()
        if not stripped or stripped.startswith("#"):
            continue
        level = len(above) - len(stripped)
        if level < indent:
            if stripped.startswith(("for ", "while ", "async for ")):
                return True
            if stripped.startswith(("def ", "async def ", "class ")):
                return False
            indent = level
    return False


def split_top(expr: str) -> list[str]:
    """``expr`` split at its commas outside brackets and strings."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(expr):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(expr[start:i])
            start = i + 1
    parts.append(expr[start:])
    return [p.strip() for p in parts if p.strip()]


def _value(expr: str, scalar: bool) -> str:
    """``loss`` -> ``loss.item()``; a dict, list or tuple literal value by value
    (``{"loss": loss}`` -> ``{"loss": loss.item()}``); anything else in parentheses first."""
    method = "item" if scalar else "detach"
    expr = expr.strip()
    literal = re.fullmatch(r"([\[{(])(.*)([\]})])", expr, re.DOTALL)
    if literal and not _one_call(expr):
        items = []
        for part in split_top(literal.group(2)):
            key, colon, value = part.partition(":") if literal.group(1) == "{" else \
                ("", "", part)
            items.append(f"{key}: {_value(value, scalar)}" if colon else _value(value, scalar))
        tail = "," if literal.group(1) == "(" and len(items) == 1 else ""
        return f"{literal.group(1)}{', '.join(items)}{tail}{literal.group(3)}"
    simple = re.fullmatch(r"[A-Za-z_][\w.]*(\[[^\]]*\])?", expr) is not None
    return f"{expr}.{method}()" if simple or _one_call(expr) else f"({expr}).{method}()"


def _one_call(expr: str) -> bool:
    """Is ``expr`` a single call, ``f(...)``, whose first parenthesis closes at its end?"""
    m = re.match(r"[A-Za-z_][\w.]*\(", expr)
    if m is None or not expr.endswith(")"):
        return False
    depth = 0
    for i, ch in enumerate(expr[m.end() - 1:], m.end() - 1):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            return i == len(expr) - 1
    return False


def as_number(text: str, scalar: bool) -> str | None:
    """A storing line rewritten to keep numbers, not the graph: ``total += loss`` ->
    ``total += loss.item()``; ``xs.append(loss)`` -> ``xs.append(loss.item())``;
    ``.detach()`` instead of ``.item()`` when the tensor is not a scalar. None if the line
    has none of these shapes."""
    m = re.fullmatch(r"(.*\.(?:append|insert)\()(.*)\)", text)
    if m:
        return f"{m.group(1)}{_value(m.group(2), scalar)})"
    m = re.fullmatch(r"(.*\.[a-z]\w*[a-z0-9]_\()(.*)\)", text)  # `x["k"].add_(loss)`
    if m and split_top(m.group(2)):
        first, *rest = split_top(m.group(2))
        return f"{m.group(1)}{', '.join([_value(first, scalar), *rest])})"
    m = re.fullmatch(r"([\w.\[\]'\"]+)\s*\+=\s*(.+)", text)
    if m:
        return f"{m.group(1)} += {_value(m.group(2), scalar)}"
    m = re.fullmatch(r"([\w.\[\]]+)\s*=\s*([\w.\[\]]+)\s*\+\s*(.+)", text)
    if m and m.group(1) == m.group(2):
        return f"{m.group(1)} = {m.group(2)} + {_value(m.group(3), scalar)}"
    return None


def out_of_place(text: str) -> str | None:
    """The out-of-place form of an in-place line, in backticks: ``h.relu_()`` ->
    `h = h.relu()`, ``x += d`` -> `x = x + d`, ``x[i] = v`` -> a copy first. None if the
    line is none of these."""
    m = re.fullmatch(r"([A-Za-z_][\w.]*)\.([a-z]\w*?)_\((.*)\)", text)
    if m and m.group(1) not in ("torch", "F", "nn", "torch.nn.functional"):
        return f"`{m.group(1)} = {m.group(1)}.{m.group(2)}({m.group(3)})`"
    m = re.fullmatch(r"([A-Za-z_][\w.]*)\s*([-+*/@]|//)=\s*(.+)", text)
    if m:
        return f"`{m.group(1)} = {m.group(1)} {m.group(2)} {m.group(3)}`"
    m = re.fullmatch(r"([A-Za-z_][\w.]*)\[(.+)\]\s*([-+*/]?)=\s*(.+)", text)
    if m:
        return f"`{m.group(1)} = {m.group(1)}.clone()` before `{text}`"
    return None


def bound_names(fn: object, value: object) -> list[str]:
    """The names under which function ``fn`` reaches ``value``: its closure variables, then
    its module's globals."""
    names = []
    code = getattr(fn, "__code__", None)
    for name, cell in zip(getattr(code, "co_freevars", ()), getattr(fn, "__closure__", None)
                          or (), strict=False):
        try:
            if cell.cell_contents is value:
                names.append(name)
        except ValueError:  # an empty cell
            continue
    names += [k for k, v in (getattr(fn, "__globals__", None) or {}).items() if v is value]
    return names


def _enclosing_def(lines: list[str], line: int) -> int:
    """The line number of the ``def`` whose body holds line ``line`` (1-based) of ``lines``,
    or 0 at module level."""
    if not 0 < line <= len(lines):
        return 0
    indent = len(lines[line - 1]) - len(lines[line - 1].lstrip())
    for k in range(line - 1, 0, -1):
        text = lines[k - 1]
        stripped = text.lstrip()
        if stripped and not stripped.startswith("#") and len(text) - len(stripped) < indent:
            if re.match(r"(?:async\s+)?def\s", stripped):
                return k
            indent = len(text) - len(stripped)
    return 0


def setup_after(fn: object, built: str, changed: str) -> tuple[str, int, int] | None:
    """In the code that defines ``fn`` (its enclosing function, or its module): the line
    that stores ``built`` (e.g. the optimiser) and the first statement after it that names
    ``changed`` (e.g. the model), before ``fn`` itself: ``(file, line built, line changed)``;
    the changed line is 0 when no statement names it."""
    code = getattr(fn, "__code__", None)
    if code is None:
        return None
    file, start = code.co_filename, code.co_firstlineno
    lines = linecache.getlines(file)
    if not lines:
        return None
    top = _enclosing_def(lines, start) or 1
    made = next((n for n in range(top, start) if _stores(lines[n - 1], built, False)), 0)
    if not made:
        return None
    name = re.compile(rf"(?<![\w.]){re.escape(changed)}\b")
    after = next((n for n in range(made + 1, start)
                  if name.search(lines[n - 1].split("#", 1)[0])
                  and not lines[n - 1].lstrip().startswith(("def ", "return "))), 0)
    return file, made, after


def _call_in_statement(file: str, start: int, call: str, marker: str) -> list[int]:
    """Lines of the statement starting at ``file:start`` (brackets balanced) that contain
    ``call`` and ``marker``."""
    lines = linecache.getlines(file)
    depth, n, fits = 0, start, []
    while n <= len(lines):
        code = lines[n - 1].split("#", 1)[0]
        if call in code and marker in code:
            fits.append(n)
        depth += code.count("(") + code.count("[") - code.count(")") - code.count("]")
        if depth <= 0:
            break
        n += 1
    return fits


def statement_line(files: set[str], name: str, call: str, marker: str = ""
                   ) -> Site | None:
    """In the user's ``files``: the line of the statement that stores ``name`` (``clf =
    nn.Sequential(...)``) which contains ``call`` and ``marker``; None unless exactly one."""
    found = [Site(f, n) for f in sorted(files) for start, _ in storing_lines(f, name, False)
             for n in _call_in_statement(f, start, call, marker)]
    return found[0] if len(found) == 1 else None


def constructor_line(cls: type, attr: str, class_name: str, marker: str
                     ) -> Site | None:
    """The line of ``cls`` that builds the module kept under attribute ``attr`` (directly,
    or inside an ``nn.Sequential(...)`` / ``nn.ModuleList([...])`` spread over several
    lines): the line within that statement that calls ``class_name(`` with ``marker`` in it
    (e.g. ``inplace=True``); None unless exactly one line fits."""
    for store in class_stores(cls, attr):
        fits = _call_in_statement(store.file, store.line, f"{class_name}(", marker)
        if len(fits) == 1:
            return Site(store.file, fits[0])
    return None


def receiver(text: str, method: str) -> str | None:
    """``r.optimizer`` in ``r.optimizer.step()`` (``method``: "step"): the expression a
    method is called on in a line of the user's code, or None."""
    m = re.search(rf"([A-Za-z_][\w.\[\]'\"]*)\s*\.\s*{re.escape(method)}\s*\(", text)
    return m.group(1) if m else None


def first_argument(text: str, method: str) -> str | None:
    """``opt`` in ``scaler.step(opt)``: the first argument of ``method`` in a line, or None."""
    m = re.search(rf"\.\s*{re.escape(method)}\s*\((.*)\)", text)
    if m is None:
        return None
    args = split_top(m.group(1))
    return args[0] if args and "=" not in args[0] else None


def ever_none(file: str, name: str, attribute: bool) -> bool:
    """Whether ``file`` ever sets ``name`` to None (a state that starts empty)."""
    return any(re.search(r"=\s*None\s*$", code_text(file, n))
               for n, _ in storing_lines(file, name, attribute)) if file else False


def enclosing_function(file: str, line: int) -> str:
    """The name of the function whose body holds ``file:line`` ("" at module level)."""
    lines = linecache.getlines(file)
    start = _enclosing_def(lines, line)
    m = re.match(r"\s*(?:async\s+)?def\s+(\w+)", lines[start - 1]) if start else None
    return m.group(1) if m else ""


def binds_global(file: str, line: int, name: str) -> bool:
    """Whether ``name`` at ``file:line`` is the module's global: the line is at module
    level, or its function declares ``global name``, or the function neither takes nor
    rebinds a variable of that name (``history.append(x)`` in a function reads the global).
    A function's own variable of the same name is another variable."""
    lines = linecache.getlines(file)
    if not 0 < line <= len(lines):
        return False
    if not lines[line - 1][:1].isspace():
        return True
    start = _enclosing_def(lines, line)
    if not start:
        return True
    top = len(lines[start - 1]) - len(lines[start - 1].lstrip())
    body = [start]
    for k in range(start + 1, len(lines) + 1):
        text = lines[k - 1]
        if text.strip() and not text.lstrip().startswith("#") and \
                len(text) - len(text.lstrip()) <= top:
            break
        body.append(k)
    word = rf"(?<![\w.]){re.escape(name)}\b"
    header = "".join(lines[start - 1:start + 2]).split(":", 1)[0]
    if re.search(rf"^\s*global\s+(?:[\w\s,]*,\s*)?{re.escape(name)}\b",
                 "".join(lines[k - 1] for k in body), re.MULTILINE):
        return True
    if re.search(r"\(.*" + word, header, re.DOTALL):
        return False  # a parameter of that name
    for k in body[1:]:
        code = _COMPARE.sub("  ", lines[k - 1].split("#", 1)[0])
        if re.match(rf"\s*for\s+[^:]*{word}[^:]*\s+in\s", code):
            return False
        if "=" in code:
            lhs = code.split("=", 1)[0].rstrip("+-*/%@&|^ ")
            if lhs.count("(") > lhs.count(")") or lhs.count("[") > lhs.count("]"):
                continue  # a keyword argument (`f(x, name=v)`), not an assignment
            if re.search(word + r"\s*(,|$)", lhs) or re.search(r",\s*" + word, lhs):
                return False  # rebound here: the function's own variable
    return True
