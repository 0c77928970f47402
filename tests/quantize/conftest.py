"""Fixtures of the quantization tests: the export tests' tiny detector, graphs and photographs."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "export"))

from export_helpers import detector, graph, one_torch_thread, photos  # noqa: E402,F401  (fixtures)
