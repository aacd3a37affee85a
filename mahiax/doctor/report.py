"""The doctor's report: findings and the loop's error, for a terminal, a notebook or JSON."""

from __future__ import annotations

import html
import json
import textwrap
from dataclasses import dataclass, field

from mahiax.doctor import sites
from mahiax.doctor.findings import KINDS, Finding, LoopError, place


def _wrap(text: str, width: int, **kwargs) -> list[str]:
    """``textwrap.wrap`` that never splits a kind's name (``buffer-requires-grad``) at a
    hyphen."""
    return textwrap.wrap(text, width, break_on_hyphens=False, **kwargs)


@dataclass(kw_only=True)
class Report:
    """What :func:`mahiax.doctor.examine` found.

    ``findings``: one per line to change (empty: nothing wrong was seen); ``error``: what the
    loop raised, if it did (type, message, step), explained; ``steps_run`` of ``steps``;
    ``model_checked``: whether a model was given (the checks of parameters, buffers and
    forwards need it).
    """

    findings: list[Finding] = field(default_factory=list)
    error: LoopError | None = None
    steps: int = 0
    steps_run: int = 0
    model_checked: bool = True

    def checked(self) -> str:
        """What "nothing wrong seen" covers, over how many steps: only the checks that ran
        (written once, beside each kind: :attr:`Kind.checked`)."""
        ran = [k.checked for k in KINDS.values() if self.model_checked or not k.needs_model]
        text = f"over {self.steps_run} steps, " + ", ".join(ran) + "."
        if self.model_checked:
            return text
        skipped = [k.name for k in KINDS.values() if k.needs_model]
        return (text + " No model was given, so these were not checked: " +
                ", ".join(skipped) + " (pass model=..., or name a global `model` for the "
                "command line).")

    @property
    def ok(self) -> bool:
        """No finding and no error."""
        return not self.findings and self.error is None

    def kinds(self) -> list[str]:
        return [f.kind for f in self.findings]

    def to_dict(self) -> dict:
        return {
            "steps": self.steps, "steps_run": self.steps_run,
            "model_checked": self.model_checked,
            "findings": [f.to_dict() for f in self.findings],
            "error": self.error.to_dict() if self.error else None,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def _headline(self) -> str:
        n = len(self.findings)
        head = (f"mahiax doctor: {self.steps_run} of {self.steps} steps ran; "
                f"{n} finding{'' if n == 1 else 's'}")
        if self.error is not None:
            head += f"; the loop raised {self.error.type} at step {self.error.step}"
        return head + "."

    def __str__(self) -> str:
        lines = [self._headline()]
        if self.ok:
            lines.extend(_wrap(f"Nothing wrong seen: {self.checked()}", 92))
        for i, f in enumerate(self.findings, 1):
            lines.append("")
            lines.append(f"{i}. {f.kind}: {KINDS[f.kind].title}")
            lines.append(f"   at {f.where}" + (f"   {sites.code_text(f.file, f.line)}"
                                               if f.line else ""))
            lines.extend(_wrap(f.message, 92, initial_indent="   ",
                                       subsequent_indent="   "))
        if self.error is not None:
            e = self.error
            lines.append("")
            first = e.message.strip().splitlines()[0] if e.message.strip() else ""
            where = f" (at {place(e.file, e.line)})" if e.line else ""
            lines.append(f"The loop raised {e.type} at step {e.step}{where}:")
            lines.extend(_wrap(first, 92, initial_indent="   ",
                                       subsequent_indent="   "))
            if e.explanation:
                lines.extend(_wrap(e.explanation, 92, initial_indent="   ",
                                           subsequent_indent="   "))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"Report(findings={self.kinds()}, error="
                f"{self.error.type if self.error else None}, steps_run={self.steps_run})")

    def _repr_html_(self) -> str:
        esc = html.escape
        parts = [f"<p><b>{esc(self._headline())}</b></p>"]
        if self.ok:
            parts.append(f"<p>Nothing wrong seen: {esc(self.checked())}</p>")
        if self.findings:
            parts.append("<table><tr><th>#</th><th>kind</th><th>line</th><th>what, evidence, "
                         "fix, lesson</th></tr>")
            for i, f in enumerate(self.findings, 1):
                code = esc(sites.code_text(f.file, f.line))
                parts.append(
                    f"<tr><td>{i}</td><td><code>{esc(f.kind)}</code></td>"
                    f"<td>{esc(f.where)}<br><code>{code}</code></td>"
                    f"<td style='text-align:left'>{esc(f.message)}</td></tr>")
            parts.append("</table>")
        if self.error is not None:
            e = self.error
            parts.append(f"<p><b>The loop raised {esc(e.type)} at step {e.step}</b>: "
                         f"<code>{esc(e.message.strip().splitlines()[0] if e.message else '')}"
                         f"</code><br>{esc(e.explanation)}</p>")
        return "\n".join(parts)
