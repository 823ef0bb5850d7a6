"""Files written so that an interruption never leaves half of one: atomic folder swaps, hashes.

Checkpoints (`models.checkpoint`) and training runs (`training.trainer`) write a complete
folder beside its target, then swap it in with `replace_folder`; a kill at any moment
leaves either the old or the new folder whole. Plain Python.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path


def aside_path(target: Path) -> Path:
    """Where `replace_folder` keeps the previous `target` during the swap: `<target>.old`."""
    return target.with_name(target.name + '.old')


def replace_folder(staging: Path, target: Path) -> None:
    """Move the finished folder `staging` to `target`, one complete copy existing at all times.

    The previous `target` is renamed aside first (`aside_path`; a kill between the two
    renames leaves it there whole, for a reader that looks for it), then removed.
    """
    aside = aside_path(target)
    if aside.exists():
        shutil.rmtree(aside)
    if target.exists():
        os.replace(target, aside)
    os.replace(staging, target)
    if aside.exists():
        shutil.rmtree(aside)


def sha256_file(path: Path) -> str:
    """Return the hex SHA-256 of a file (read in 4 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, 'rb') as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b''):
            digest.update(chunk)
    return digest.hexdigest()
