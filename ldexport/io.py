"""Files: atomic writing, SHA-256, and listing images. The one owner of each.

Atomic writing puts the bytes in a temporary file beside the target and renames it over
the target only when complete, so a reader (or a crash) sees the previous file or the new
one, never half of one. ``tempfile.mkstemp`` creates its file with mode ``0600``; the
finished file is given the mode an ordinary ``open(path, "w")`` would have had
(``0666`` less the user's umask), so that a model written here can be read by a serving
process running as another user.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from ldexport.errors import LdexportError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
"""File name endings :func:`list_images` takes for images (any case)."""


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed over ``path`` on success.

    For writers that want a file name (``onnx.save``, ``torch.save``)::

        with atomic_path(output) as temporary:
            onnx.save(model, str(temporary))

    On an exception the temporary file is deleted and ``path`` is left as it was.

    Raises:
        LdexportError: the folder of ``path`` does not exist, or is not writable.
    """
    path = Path(path)
    _check_target(path)
    try:
        handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise LdexportError(f"cannot write {path}: {error.strerror or error}") from None
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        with open(temporary, "rb+") as stream:
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o666 & ~current_umask())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _check_target(path: Path) -> None:
    if not path.parent.is_dir():
        what = "is a file, not a folder" if path.parent.exists() else "does not exist"
        raise LdexportError(f"cannot write {path}: {path.parent} {what}")
    if path.is_dir():
        raise LdexportError(f"cannot write {path}: it is a folder")


def check_writable(path: str | Path) -> None:
    """Raises the one-line error writing ``path`` would meet, now: for a command that
    writes only after minutes of work.

    Raises:
        LdexportError: the folder of ``path`` is missing, not a folder, or not writable,
            or ``path`` is a folder.
    """
    path = Path(path)
    _check_target(path)
    try:
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as error:
        raise LdexportError(f"cannot write {path}: {error.strerror or error}") from None


def atomic_write_bytes(path: str | Path, data: bytes | bytearray | memoryview) -> Path:
    """Writes ``data`` to ``path`` atomically (see the module doc); returns ``path``."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Writes ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def make_folder(path: str | Path) -> Path:
    """Creates the folder ``path`` (and its parents) unless it exists, and checks that
    files can be written in it (before a command's long work, not after); returns it.

    Raises:
        LdexportError: a file is in the way, or the folder cannot be created or written.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except FileExistsError:
        raise LdexportError(f"cannot make the folder {path}: a file is in the way") from None
    except OSError as error:
        raise LdexportError(f"cannot write in the folder {path}: {error.strerror or error}") from None
    return path


def check_output(output: str | Path, inputs: Sequence[str | Path | None]) -> None:
    """A command's output file, checked before its work: not one of its ``inputs``
    (:func:`check_not_an_input`), and writable (:func:`check_writable`)."""
    check_not_an_input(output, inputs)
    check_writable(output)


def check_not_an_input(output: str | Path, inputs: Sequence[str | Path | None]) -> None:
    """Refuses an output path that is one of the command's inputs (it would replace it).

    Raises:
        LdexportError: ``output`` and one of ``inputs`` are the same file or folder.
    """
    target = Path(output).resolve()
    for source in inputs:
        if source is not None and Path(source).resolve() == target:
            raise LdexportError(f"the output {output} would replace the input {source}: give another path")


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes.

    Raises:
        LdexportError: the file cannot be read.
    """
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    except OSError as error:
        raise LdexportError(f"cannot read {path}: {error.strerror or error}") from None
    return digest.hexdigest()


def is_image_file(path: Path) -> bool:
    """Whether ``path`` is a file named as an image (:data:`IMAGE_SUFFIXES`)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def list_images(
    sources: str | Path | Sequence[str | Path], *, recursive: bool = False, max_images: int | None = None
) -> list[Path]:
    """The image files of ``sources``: files as given, folders' images sorted by path.

    Args:
        sources: image files and folders, or one of them.
        recursive: also take the images of sub-folders.
        max_images: keep the first ones only.

    Raises:
        LdexportError: a source is missing or unreadable, a file is not named as an image,
            or no image was found.
    """
    if isinstance(sources, (str, Path)):
        sources = [sources]
    paths: list[Path] = []
    for source in map(Path, sources):
        if source.is_file():
            if source.suffix.lower() not in IMAGE_SUFFIXES:
                raise LdexportError(f"{source} is not an image file ({', '.join(IMAGE_SUFFIXES)})")
            paths.append(source)
        elif source.is_dir():
            try:
                found = source.rglob("*") if recursive else source.iterdir()
                paths += sorted(path for path in found if is_image_file(path))
            except OSError as error:
                raise LdexportError(f"cannot list image folder {source}: {error.strerror or error}") from None
        else:
            raise LdexportError(f"image file or folder not found: {source}")
    if not paths:
        where = ", ".join(str(source) for source in sources)
        raise LdexportError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {where}")
    return paths[:max_images] if max_images else paths
