"""Where the run store lives, and which run names are safe to use.

The store is one SQLite file. Its location is, first match wins: the path passed in (an
option such as ``--store``), the ``MAHIAX_STORE`` environment variable, ``runs/mahiax.sqlite``
in the current working directory. A folder means ``<folder>/mahiax.sqlite``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from mahiax.store.errors import BadRunNameError, StoreError

DEFAULT_DIR = "runs"
ENV_VAR = "MAHIAX_STORE"
FILE_NAME = "mahiax.sqlite"

_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def resolve_store_path(path: str | os.PathLike | None = None) -> Path:
    """The store file to use: ``path``, else ``$MAHIAX_STORE``, else ``runs/mahiax.sqlite``.

    A value names a folder (and the file inside it is ``mahiax.sqlite``) when it is an
    existing folder, ends with a path separator, or has no file suffix and does not exist;
    otherwise it names the file itself. The result is absolute, so that messages name it fully.
    """
    raw = os.fspath(path) if path is not None else os.environ.get(ENV_VAR) or None
    if raw is None:
        return Path.cwd() / DEFAULT_DIR / FILE_NAME
    if raw == "":
        raise StoreError("the run store path is empty; give a file or folder")
    p = Path(raw).expanduser()
    is_dir = (
        p.is_dir()
        or raw.endswith(("/", os.sep))
        or (p.suffix == "" and not p.exists())
    )
    return (p / FILE_NAME if is_dir else p).absolute()


def validate_run_name(name: object) -> str:
    """Return ``name`` if it is a valid run name, else raise :class:`BadRunNameError`.

    Names become SQL keys and file names (checkpoints), so they are kept to a portable set.
    """
    if not isinstance(name, str):
        raise BadRunNameError(name, f"it is a {type(name).__name__}, not a string")
    if not name:
        raise BadRunNameError(name, "it is empty")
    if len(name) > 64:
        raise BadRunNameError(name, f"it is {len(name)} characters long")
    for sep in ("/", "\\"):
        if sep in name:
            raise BadRunNameError(name, f"it contains {sep!r}, a path separator")
    bad = [c for c in name if ord(c) < 32 or ord(c) == 127]
    if bad:
        raise BadRunNameError(name, f"it contains the control character {bad[0]!r}")
    if name.startswith("."):
        raise BadRunNameError(name, "it starts with '.'")
    if not _NAME.fullmatch(name):
        other = next(c for c in name if not _NAME.fullmatch(c))
        raise BadRunNameError(name, f"it contains {other!r}")
    return name


# Beside the store's file, per run: its checkpoint (mahiax/recording.py writes and resumes it)
# and the allocator snapshots of its memory spikes (the training probe writes them).
CHECKPOINT_DIR = "checkpoints"
SNAPSHOT_DIR = "memory_snapshots"


def checkpoint_path(store_file: Path, name: str) -> Path:
    """Run ``name``'s checkpoint: ``<store dir>/checkpoints/<name>.pt``, for the store whose
    SQLite file is ``store_file``."""
    return Path(store_file).parent / CHECKPOINT_DIR / f"{name}.pt"


def snapshot_dir(store_file: Path, name: str) -> Path:
    """Where run ``name``'s memory-spike snapshots go: ``<store dir>/memory_snapshots/<name>``,
    for the store whose SQLite file is ``store_file``."""
    return Path(store_file).parent / SNAPSHOT_DIR / str(name)
