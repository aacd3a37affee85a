"""Bytes as people read them: MiB (2**20 bytes), labelled, wherever the lab shows memory.

One unit everywhere (meter lines, lessons, dashboard axes, CLI): the same series must never
read as two figures. The summary printed ``torch.cuda.memory_allocated() / 2**20`` and called
it "MB"; its number is a MiB figure, so the lab quotes the summary's "MB" where it quotes the
summary and labels its own figures MiB. Imports nothing heavy (the dashboard uses it).
"""

from __future__ import annotations

MIB = 2**20  # bytes in a mebibyte
KIB = 2**10  # bytes in a kibibyte


def mib(n: float) -> float:
    """``n`` bytes in MiB."""
    return n / MIB


def format_bytes(n: float | None) -> str:
    """``12.3 MiB``; under 0.05 MiB in KiB (``4.0 KiB``) so a small figure does not read
    ``0.0 MiB``; ``n/a`` where there is no figure."""
    if n is None:
        return "n/a"
    if 0 < abs(n) < MIB // 20:
        return f"{n / KIB:.1f} KiB"
    return f"{n / MIB:.1f} MiB"
