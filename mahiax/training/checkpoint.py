"""Checkpoints: a trainer's :meth:`~mahiax.training.trainer.Trainer.state_dict`, written atomically
and loaded with ``weights_only=True``.

What a checkpoint holds is the trainer's business (its components' own state dicts, the step
and the RNG states); this module only stores it safely. Writing goes to a temporary file in
the same directory, then ``os.replace``: a process killed mid-write leaves the previous
checkpoint, never a torn one. Loading uses ``torch.load(weights_only=True)``, which refuses
arbitrary pickled objects.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from mahiax.errors import BadInput

FORMAT = 2  # format 1 (no RNG states, state spread over the file) is no longer read


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Write ``state`` (a ``Trainer.state_dict()``) to ``path`` atomically; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, "trainer": state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX: old file or new file, never half of one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike) -> dict:
    """The trainer state stored at ``path``; a clear error if the file is not a checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a foreign or corrupt file
        raise BadInput(f"{path} is not a readable MAHIA-X checkpoint: {e}") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BadInput(f"{path} is not a MAHIA-X checkpoint (format {FORMAT}); start the run "
                       f"anew under another name")
    return data["trainer"]
