"""The ``ldexport`` command line: one click group, one command a module in ``commands/``.

A user error (:class:`~ldexport.errors.LdexportError`, or a file the system will not let
the command write: no permission, a read-only or full disk) prints one line and exits 1;
any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import importlib
import sys

import click

from ldexport import __version__
from ldexport.errors import LdexportError

# Command modules, imported when the group is built. Each defines ``command``.
_COMMANDS = ("train", "evaluate", "onnx", "quantize", "parity", "trt", "predict", "bench", "demo")


# What the machine refuses, not what the program gets wrong: no traceback for these.
_USER_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT)


class _Group(click.Group):
    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except LdexportError as error:
            click.echo(f"ldexport: error: {_one_line(error)}", err=True)
            sys.exit(1)
        except OSError as error:
            if error.errno not in _USER_ERRNOS:
                raise
            where = f"{error.filename}: " if error.filename else ""
            click.echo(f"ldexport: error: {where}{error.strerror or error}", err=True)
            sys.exit(1)


def _one_line(error: LdexportError) -> str:
    """The user-facing line of an error, also when a DataLoader worker re-raised it.

    A worker's error comes back as ``LdexportError("Caught LdexportError in DataLoader
    worker ...\nOriginal Traceback ...\nldexport.errors.LdexportError: <message>")``.
    """
    lines = [line for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return lines[-1].split("LdexportError: ", 1)[-1].strip()


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="ldexport")
def main() -> None:
    """Distill GFL detectors with LD, export them to ONNX / TensorRT, and check parity."""


for _name in _COMMANDS:
    try:
        _module = importlib.import_module(f"ldexport.commands.{_name}")
    except ModuleNotFoundError as _error:
        if _error.name != f"ldexport.commands.{_name}":
            raise
        continue
    main.add_command(_module.command)


if __name__ == "__main__":
    main()
