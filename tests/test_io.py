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


def test_unwritable_places_are_one_line_errors(tmp_path):
    from ldexport.io import check_not_an_input, make_folder

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(LdexportError, match="a_file is a file, not a folder"):
        atomic_write_text(a_file / "out.json", "{}")
    with pytest.raises(LdexportError, match="it is a folder"):
        atomic_write_text(tmp_path, "{}")
    from ldexport.io import check_writable

    with pytest.raises(LdexportError, match="missing does not exist"):
        check_writable(tmp_path / "missing" / "out.json")
    check_writable(tmp_path / "out.json")
    assert sorted(tmp_path.iterdir()) == [a_file]  # the check leaves nothing behind
    with pytest.raises(LdexportError, match="a file is in the way"):
        make_folder(a_file)
    assert make_folder(tmp_path / "new" / "deeper").is_dir()
    with pytest.raises(LdexportError, match="would replace the input"):
        check_not_an_input(tmp_path / "." / "a_file", [None, a_file])
    check_not_an_input(tmp_path / "other", [a_file])


def test_the_command_line_turns_a_refused_write_into_one_line():
    """An OSError the system raises for the user's files (no permission, read-only or full
    disk) is not a bug: one line, exit 1, whichever command met it."""
    import errno

    import click
    from click.testing import CliRunner

    from ldexport.cli import main

    @click.command("refused")
    def refused() -> None:
        raise PermissionError(errno.EACCES, "Permission denied", "/data/out.json")

    @click.command("broken")
    def broken() -> None:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/internal")

    main.add_command(refused)
    main.add_command(broken)
    try:
        result = CliRunner().invoke(main, ["refused"])
        assert result.exit_code == 1
        assert result.output.strip() == "ldexport: error: /data/out.json: Permission denied"
        other = CliRunner().invoke(main, ["broken"])
        assert isinstance(other.exception, FileNotFoundError)  # other errors stay bugs, with their traceback
    finally:
        main.commands.pop("refused")
        main.commands.pop("broken")
