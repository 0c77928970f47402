"""Writing files so that a reader never sees half of one, and hashing them."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from ldexport.errors import LdexportError


def atomic_write_bytes(path: Path, data: bytes | bytearray | memoryview) -> None:
    """Writes ``data`` to a temporary file beside ``path``, then renames it over ``path``.

    A crash leaves either the old file or the new one, never a truncated one.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise LdexportError(f"cannot write {path}: folder {path.parent} does not exist")
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
