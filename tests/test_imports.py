"""The package's layers point down: no package cycle, export never imports trt, the CLI
loads no TensorRT module until a TensorRT command runs.

The walk reads every ``import`` statement of every module (function-level ones too), so a
lazy import inside a function counts as much as one at the top.
"""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ldexport"


def _package_imports() -> dict[str, set[str]]:
    """``{a: {b, ...}}``: some module of ``ldexport.a`` imports some module of ``ldexport.b``."""
    edges: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        source = path.relative_to(PACKAGE).with_suffix("").parts[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] == "ldexport" and len(parts) > 1 and parts[1] != source:
                    edges.setdefault(source, set()).add(parts[1])
    return edges


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_package_cycle():
    edges = _package_imports()
    assert {"export", "parity", "trt", "runtime", "commands"} <= set(edges)  # the walk sees them
    assert _cycle(edges) is None, " -> ".join(_cycle(edges) or [])


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}}) is None


def test_layers_point_down():
    edges = _package_imports()
    assert "trt" not in edges["export"] and "parity" not in edges["export"]
    assert "trt" not in edges["parity"] and "runtime" not in edges["parity"]
    assert not edges.get("io", set()) - {"errors"}  # the core imports nothing above it
    for lower in ("model", "data", "export", "parity", "trt", "runtime", "engine"):
        assert "commands" not in edges.get(lower, set()) and "cli" not in edges.get(lower, set()), lower


def test_the_cli_imports_no_tensorrt_module():
    code = (
        "import sys; from click.testing import CliRunner; from ldexport.cli import main; "
        "result = CliRunner().invoke(main, ['--help']); assert result.exit_code == 0; "
        "print(sorted(m for m in sys.modules if m.startswith('ldexport.trt') or m == 'tensorrt'))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]", run.stdout
    run = subprocess.run([sys.executable, "-m", "ldexport.cli", "--help"], capture_output=True, text=True)
    assert run.returncode == 0 and "predict" in run.stdout and "bench" in run.stdout
