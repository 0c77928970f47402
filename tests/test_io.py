"""Atomic writes (all or nothing, the user's umask), hashing, and listing images."""

import hashlib
import os
import stat

import pytest

from ldexport.errors import LdexportError
from ldexport.io import atomic_path, atomic_write_bytes, atomic_write_text, list_images, sha256_file


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_written_files_honour_the_umask_not_0600(tmp_path, umask_022):
    path = atomic_write_text(tmp_path / "report.json", "{}\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    os.umask(0o027)
    with atomic_path(tmp_path / "model.onnx") as temporary:
        temporary.write_bytes(b"graph")
    assert stat.S_IMODE((tmp_path / "model.onnx").stat().st_mode) == 0o640


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = atomic_write_bytes(tmp_path / "model.onnx", b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as temporary:
            temporary.write_bytes(b"half of the new one")
            raise RuntimeError("crash while writing")
    assert target.read_bytes() == b"old" and sorted(tmp_path.iterdir()) == [target]
    with pytest.raises(LdexportError, match="does not exist"):
        atomic_write_bytes(tmp_path / "missing" / "x.json", b"")


def test_sha256(tmp_path):
    path = atomic_write_bytes(tmp_path / "a.bin", b"x" * 3_000_000)
    assert sha256_file(path) == hashlib.sha256(b"x" * 3_000_000).hexdigest()
    with pytest.raises(LdexportError, match="cannot read"):
        sha256_file(tmp_path / "missing.bin")


def test_list_images_files_and_folders(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.JPG", "a.png", "notes.txt", "sub/c.jpg"):
        (tmp_path / name).write_bytes(b"")
    assert list_images(tmp_path) == [tmp_path / "a.png", tmp_path / "b.JPG"]
    assert list_images(tmp_path, recursive=True)[-1] == tmp_path / "sub" / "c.jpg"
    assert list_images([tmp_path / "sub" / "c.jpg", tmp_path], max_images=2) == [tmp_path / "sub" / "c.jpg", tmp_path / "a.png"]
    with pytest.raises(LdexportError, match="not an image file"):
        list_images(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LdexportError, match="no images"):
        list_images(tmp_path / "empty")
    with pytest.raises(LdexportError, match="not found"):
        list_images(tmp_path / "nowhere")
