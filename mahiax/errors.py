"""The one error type for a request that is wrong, as opposed to code that is.

:class:`BadInput` is raised where a person's request is checked: config fields, command-line
flags, a run that cannot be resumed as asked, a file that is not a checkpoint. The command
line prints such an error as one line (exit status 2); every other exception, a
``ValueError`` raised by a bug inside a run included, keeps its traceback.

It derives from ``ValueError``, so code that catches ``ValueError`` still catches it.
"""

from __future__ import annotations

from typing import Any


class BadInput(ValueError):
    """A request that cannot be carried out as given; the message says what is allowed."""


class ResumeConflict(BadInput):
    """A resumed run was given a setting that differs from the one it was started with.

    ``flag`` is how the person wrote the setting (``--lr 0.01``), ``field`` the config field
    it sets, ``stored`` the run's value and ``given`` the new one.
    """

    def __init__(self, run: str, field: str, stored: Any, given: Any, flag: str | None = None):
        self.run, self.field, self.stored, self.given = run, field, stored, given
        self.flag = flag or f"{field}={shown(given)}"
        super().__init__(
            f"{self.flag} conflicts with run {run!r} (stored {field}={shown(stored)}); "
            f"resume without it or start a new run"
        )


def shown(value: Any) -> str:
    """A config value as a person types it: ``0.003``, ``dwa``, ``['keywords', 'mixed']``."""
    if isinstance(value, tuple):
        value = list(value)
    return value if isinstance(value, str) else repr(value)
