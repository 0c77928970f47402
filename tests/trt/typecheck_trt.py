"""Type-check ``ldexport/trt`` against ``tensorrt-stubs``, as CI does.

    python tests/trt/typecheck_trt.py                 # ldexport/trt and commands/trt.py
    python tests/trt/typecheck_trt.py some/file.py    # other targets

``tensorrt-stubs`` (install it with ``pip install --no-deps tensorrt-stubs==10.13.0.35.1``;
its dependency is the real TensorRT) puts ``.pyi`` files into ``site-packages/tensorrt``
and ``site-packages/tensorrt_bindings`` without a ``py.typed`` marker, and a few of its
signatures are not valid Python (a parameter named ``in``; a parameter without default
after ones with defaults). So mypy, left alone, refuses the import. This script copies
the stubs under ``.mypy_cache/``, repairs those lines (``in`` -> ``in_``; ``= ...`` added to
the late parameter), and runs mypy with ``MYPYPATH`` pointing at the copy and the
``[mypy-ldexport.trt.*]`` sections of ``setup.cfg``.
"""

from __future__ import annotations

import ast
import importlib.metadata
import keyword
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_TARGETS = ("ldexport/trt", "ldexport/commands/trt.py")
STUBS_DISTRIBUTION = "tensorrt-stubs"
INSTALL_HINT = "pip install --no-deps tensorrt-stubs==10.13.0.35.1"

_KEYWORD_PARAMETER = re.compile(
    r"([(,]\s*)(%s)(\s*[:,)=])" % "|".join(k for k in keyword.kwlist if k.islower())
)
_SIGNATURE = re.compile(r"^(\s*def \w+\()(.*)(\)\s*(?:->.*)?:.*)$")


class StubsMissing(RuntimeError):
    """``tensorrt-stubs`` is not installed."""


def _late_defaults(line: str) -> str:
    """Gives ``= ...`` to parameters that follow one with a default."""
    match = _SIGNATURE.match(line)
    if match is None:
        return line
    parameters, seen_default = [], False
    for parameter in match.group(2).split(", "):
        if "=" in parameter:
            seen_default = True
        elif seen_default and not parameter.lstrip().startswith("*"):
            parameter += " = ..."
        parameters.append(parameter)
    return match.group(1) + ", ".join(parameters) + match.group(3)


def repair(source: str, name: str) -> str:
    """Repairs the syntax errors of one stub file, one line at a time."""
    lines = source.splitlines()
    for _ in range(1000):
        try:
            ast.parse("\n".join(lines), filename=name, feature_version=(3, 10))
            return "\n".join(lines) + "\n"
        except SyntaxError as error:
            index = (error.lineno or 1) - 1
            old = lines[index]
            new = _KEYWORD_PARAMETER.sub(lambda m: m.group(1) + m.group(2) + "_" + m.group(3), old)
            if new == old:
                new = _late_defaults(old)
            if new == old:
                raise RuntimeError(f"cannot repair {name}:{error.lineno}: {error.msg}") from None
            lines[index] = new
    raise RuntimeError(f"too many syntax errors in {name}")


def repaired_stubs(cache_root: Path = REPO / ".mypy_cache") -> Path:
    """A folder holding repaired copies of the installed TensorRT stubs, for MYPYPATH."""
    try:
        distribution = importlib.metadata.distribution(STUBS_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise StubsMissing(f"{STUBS_DISTRIBUTION} is not installed: {INSTALL_HINT}") from None
    stubs = [f for f in distribution.files or () if f.suffix == ".pyi"]
    if not stubs:
        raise StubsMissing(f"{STUBS_DISTRIBUTION} has no .pyi files: {INSTALL_HINT}")
    out = cache_root / f"ldexport-trt-stubs-{distribution.version}"
    if (out / ".complete").is_file():
        return out
    for stub in stubs:
        target = out / str(stub)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(repair(Path(stub.locate()).read_text(), str(stub)))
    (out / ".complete").write_text(distribution.version + "\n")
    return out


def mypy_command(targets: list[str]) -> list[str]:
    """The mypy command line run from the repository root."""
    return [sys.executable, "-m", "mypy", "--config-file", str(REPO / "setup.cfg"), *targets]


def run(targets: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """Runs mypy on ``targets`` with the repaired stubs; returns the finished process."""
    environment = dict(os.environ, MYPYPATH=str(repaired_stubs()))
    return subprocess.run(
        mypy_command(list(targets or DEFAULT_TARGETS)),
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )


def main(argv: list[str]) -> int:
    try:
        result = run(argv or None)
    except StubsMissing as error:
        print(f"typecheck_trt: {error}", file=sys.stderr)
        return 2
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
