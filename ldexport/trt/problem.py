"""One finding of the readiness check, and the report that lists them."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Literal

Severity = Literal["error", "warning"]


@dataclasses.dataclass(frozen=True)
class Problem:
    """Something in an ONNX graph that TensorRT will reject or compute differently.

    Attributes:
        node: the node's name (``"<OpType>(<first output>)"`` when the node has none);
            for a graph input, the input's name; inside a local function or a subgraph,
            prefixed by the calling node's name and ``/``.
        op_type: the node's op type (``"domain::Op"`` outside the default domain), or
            ``"graph input"`` / ``"initializer"`` / ``"model"``.
        rule: a stable id: ``unsupported-op``, ``custom-op``, ``topk-k``, ``topk-sorted``,
            ``qdq``, ``float64``, ``integer-type``, ``dtype``, ``profile``, ``opset``,
            ``metadata``.
        message: what is wrong, in one sentence.
        fix: what to change in the model or the export.
        severity: ``"error"`` (the build would fail or compute something else) or
            ``"warning"`` (cannot be proven here; the build may still fail).
    """

    node: str
    op_type: str
    rule: str
    message: str
    fix: str
    severity: Severity = "error"

    def one_line(self) -> str:
        """``error [rule] node 'n' (Op): message``."""
        return f"{self.severity} [{self.rule}] {self.op_type} '{self.node}': {self.message}"


def has_errors(problems: Iterable[Problem]) -> bool:
    """Whether any problem is an error (warnings alone do not block a build)."""
    return any(problem.severity == "error" for problem in problems)


def summary(problems: Sequence[Problem]) -> str:
    """``"2 errors, 1 warning"`` or ``"no problems"``."""
    errors = sum(problem.severity == "error" for problem in problems)
    warnings = len(problems) - errors
    parts = []
    if errors:
        parts.append(f"{errors} error{'s' if errors != 1 else ''}")
    if warnings:
        parts.append(f"{warnings} warning{'s' if warnings != 1 else ''}")
    return ", ".join(parts) or "no problems"


def format_problems(problems: Sequence[Problem], *, trt_version: str | None = None) -> str:
    """A readable report: a verdict line, then each problem with its fix.

    Args:
        problems: from :func:`ldexport.trt.readiness.check_onnx`, errors listed first.
        trt_version: named in the verdict line when given.
    """
    target = f"TensorRT {trt_version}" if trt_version else "TensorRT"
    if not problems:
        return f"TensorRT readiness: ready for {target} (no problems found)"
    verdict = "NOT ready" if has_errors(problems) else "ready, with warnings,"
    lines = [f"TensorRT readiness: {verdict} for {target}: {summary(problems)}"]
    ordered = sorted(problems, key=lambda problem: problem.severity != "error")
    for problem in ordered:
        lines.append(f"  {problem.one_line()}")
        lines.append(f"      fix: {problem.fix}")
    return "\n".join(lines)
