"""The run store's errors: each one says what is wrong, where, and what to do about it.

All derive from :class:`StoreError`, a :class:`~mahiax.errors.BadInput` (so a
``ValueError``): the CLI reports any of them as one line without a traceback.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mahiax.errors import BadInput


class StoreError(BadInput):
    """A run store could not be used as asked (a bad request: one line, no traceback)."""


class NotAStoreError(StoreError):
    """The file exists but is not a MAHIA-X run store (``is_sqlite``: it is another database)."""

    def __init__(self, path: Path, why: str, is_sqlite: bool = False):
        if is_sqlite:
            msg = f"{path} is an SQLite database but not a MAHIA-X run store ({why})"
        else:
            msg = f"{path} is not a MAHIA-X run store: {why}"
        super().__init__(msg)
        self.path, self.is_sqlite = path, is_sqlite


class NewerSchemaError(StoreError):
    """The store was written by a newer mahiax with a schema this one cannot read."""

    def __init__(self, path: Path, found: int, supported: int):
        super().__init__(
            f"run store {path} has schema version {found}, but this mahiax reads schema "
            f"version {supported} at most; upgrade mahiax to open it"
        )
        self.path, self.found, self.supported = path, found, supported


class StoreLockedError(StoreError):
    """Another process held the store's write lock for longer than the busy timeout."""

    def __init__(self, path: Path, waited_s: float):
        super().__init__(
            f"run store {path} is locked: another process holds a write lock on it "
            f"(waited {waited_s:.1f} s). Wait for that process to finish its write, or close "
            f"the other writer (another 'mahiax train', an open RunWriter or an SQLite shell), "
            f"then try again"
        )
        self.path = path


class BadRunNameError(StoreError):
    """A run name that could not be used safely as a key and in file names."""

    ALLOWED = (
        "1-64 ASCII letters, digits, '-', '_' and '.', not starting with '.' "
        "(no '/', '\\', spaces or control characters)"
    )

    def __init__(self, name: object, why: str):
        super().__init__(f"run name {name!r} is invalid: {why}; allowed: {self.ALLOWED}")
        self.name = name


class RunNotFoundError(StoreError):
    """No run of that name is in the store."""

    def __init__(self, name: str, path: Path, existing: Sequence[str]):
        if existing:
            shown = ", ".join(repr(n) for n in existing[:10])
            more = f" and {len(existing) - 10} more" if len(existing) > 10 else ""
            have = f"runs in the store: {shown}{more}"
        else:
            have = "the store has no runs yet"
        super().__init__(f"no run named {name!r} in run store {path}; {have}")
        self.name, self.path = name, path


class RunExistsError(StoreError):
    """A new run was asked for under a name that is taken, or a live process writes it."""

    def __init__(self, name: str, path: Path, writer_pid: int | None = None):
        if writer_pid is not None:
            msg = (
                f"run {name!r} in run store {path} is being written by process {writer_pid}; "
                f"wait for it to finish or stop it, or choose another run name"
            )
        else:
            msg = (
                f"run {name!r} already exists in run store {path}; continue it with --resume "
                f"(RunWriter(..., resume=True)) or choose another run name"
            )
        super().__init__(msg)
        self.name, self.path, self.writer_pid = name, path, writer_pid


class SnapshotNotFoundError(StoreError):
    """No tensor snapshot under that key and step."""
