"""mypy on ldexport/trt against tensorrt-stubs, so that CI catches TensorRT API misuse."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed")

_SCRIPT = Path(__file__).with_name("typecheck_trt.py")


def _typecheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("typecheck_trt", _SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(600)
def test_ldexport_trt_type_checks() -> None:
    typecheck = _typecheck()
    try:
        result = typecheck.run()
    except typecheck.StubsMissing as error:
        pytest.fail(f"{error} (the type check of ldexport/trt needs the TensorRT stubs)")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout


@pytest.mark.timeout(600)
def test_wrong_tensorrt_method_and_keyword_fail(tmp_path: Path) -> None:
    misuse = tmp_path / "misuse.py"
    misuse.write_text(
        "import tensorrt as trt\n\n\n"
        "def build(config: trt.IBuilderConfig) -> None:\n"
        "    config.set_memory_pool_limt(trt.MemoryPoolType.WORKSPACE, 1 << 30)\n"
        '    config.set_timing_cache(config.create_timing_cache(b""), ignore=False)\n'
    )
    typecheck = _typecheck()
    try:
        result = typecheck.run([str(misuse)])
    except typecheck.StubsMissing as error:
        pytest.fail(str(error))
    assert result.returncode == 1, result.stdout + result.stderr
    assert '"IBuilderConfig" has no attribute "set_memory_pool_limt"' in result.stdout
    assert 'Unexpected keyword argument "ignore" for "set_timing_cache"' in result.stdout
