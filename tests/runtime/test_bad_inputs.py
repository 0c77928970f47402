"""Bad input to eval / predict / bench: one line, exit 1, nothing half-written."""

import onnx
import pytest
from click.testing import CliRunner

from ldexport.cli import main
from ldexport.export.options import ExportOptions
from ldexport.export.student import export_student
from ldexport.trt.backend import backend_missing_reason


def _user_error(args, message):
    result = CliRunner().invoke(main, [str(arg) for arg in args])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ldexport: error:") and message in lines[0], result.stderr


@pytest.fixture(scope="module")
def foreign_onnx(tmp_path_factory):
    node = onnx.helper.make_node("Identity", ["x"], ["y"])
    value = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([node], "other", [value], [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    path = tmp_path_factory.mktemp("foreign") / "other.onnx"
    onnx.save(onnx.helper.make_model(graph), path)
    return path


def test_a_model_without_ldexports_metadata(shapes_student, foreign_onnx, tmp_path):
    _user_error(["eval", shapes_student.config_path, "--onnx", foreign_onnx], "not an ldexport detector graph")
    _user_error(["predict", "--onnx", foreign_onnx, shapes_student.config.data.root + "/val", "-o", tmp_path / "out"], "not an ldexport")
    _user_error(["bench", "--onnx", foreign_onnx], "not an ldexport detector graph")
    assert not (tmp_path / "out").exists()


def test_an_image_folder_without_images(shapes_student, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no pictures here")
    _user_error(["predict", "--onnx", shapes_student.onnx, tmp_path / "empty", "-o", tmp_path / "out"], "no images")
    _user_error(["predict", "--onnx", shapes_student.onnx, tmp_path / "nowhere", "-o", tmp_path / "out"], "not found")
    assert not (tmp_path / "out").exists()


def test_a_shape_the_model_refuses(shapes_student, tmp_path):
    static = export_student(shapes_student.config, shapes_student.checkpoint, tmp_path / "static.onnx", ExportOptions(height=128, width=128)).path
    _user_error(["bench", "--onnx", static, "--shape", "224x224"], "takes 128x128 only")
    _user_error(["bench", "--onnx", static, "--shape", "128x128", "--batch", "2"], "batches of 1 only")
    _user_error(["bench", "--onnx", shapes_student.onnx, "--shape", "100x100"], "multiple of 32")


def test_model_choice_errors(shapes_student, tmp_path):
    _user_error(["bench"], "give exactly one model")
    _user_error(["bench", "--onnx", shapes_student.onnx, "--checkpoint", shapes_student.checkpoint], "give exactly one model")
    _user_error(["bench", "--checkpoint", shapes_student.checkpoint], "needs --config")
    _user_error(["eval", shapes_student.config_path], "nothing to evaluate")
    _user_error(["eval", shapes_student.config_path, "--onnx", shapes_student.onnx, "--compare"], "--compare needs CHECKPOINT")


@pytest.mark.skipif(backend_missing_reason() is None, reason="TensorRT and CUDA are here")
def test_an_engine_without_tensorrt_or_its_sidecar(shapes_student, tmp_path):
    engine = tmp_path / "student.engine"
    engine.write_bytes(b"not an engine")
    _user_error(["eval", shapes_student.config_path, "--engine", engine], "sidecar")
    (tmp_path / "student.engine.json").write_text('{"onnx": {"metadata": {}}}')
    _user_error(["eval", shapes_student.config_path, "--engine", engine], "not an ldexport detector graph")
    (tmp_path / "student.engine.json").write_text(
        '{"onnx": {"metadata": ' + __import__("json").dumps(_metadata(shapes_student.onnx)) + "}}"
    )
    _user_error(["bench", "--engine", engine], "TensorRT/CUDA is not available")


def _metadata(path):
    return {prop.key: prop.value for prop in onnx.load(str(path), load_external_data=False).metadata_props}
