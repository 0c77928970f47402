"""Bad input to eval / predict / bench: one line, exit 1, nothing half-written."""

from pathlib import Path

import onnx
import pytest
import torch
from click.testing import CliRunner

from ldexport.cli import main
from ldexport.export.options import ExportOptions
from ldexport.export.student import export_student
from ldexport.io import list_images
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


def _copies(shapes_student, folder):
    """The student's config, checkpoint and graph copied into ``folder`` (tests may try to overwrite them)."""
    import shutil

    folder.mkdir(exist_ok=True)
    return [Path(shutil.copy(path, folder)) for path in (shapes_student.config_path, shapes_student.checkpoint, shapes_student.onnx)]


def test_no_output_replaces_an_input(shapes_student, tmp_path):
    config, checkpoint, graph = _copies(shapes_student, tmp_path / "model")
    before = {path: path.read_bytes() for path in (config, checkpoint, graph)}
    _user_error(["eval", config, checkpoint, "--report", checkpoint], "would replace the input")
    _user_error(["eval", config, "--onnx", graph, "--report", graph], "would replace the input")
    _user_error(["eval", config, checkpoint, "--onnx", graph, "--report", config], "would replace the input")
    _user_error(["bench", "--onnx", graph, "--shape", "128x128", "--report", graph], "would replace the input")
    _user_error(["bench", "--config", config, "--checkpoint", checkpoint, "--shape", "128x128", "--report", checkpoint], "would replace")
    assert {path: path.read_bytes() for path in before} == before


def test_a_report_that_cannot_be_written_fails_before_the_work(shapes_student, tmp_path):
    """eval, parity and bench evaluated, compared or timed first, then failed to write."""
    config, checkpoint, graph = _copies(shapes_student, tmp_path / "model")
    report = tmp_path / "missing" / "report.json"
    for args in (
        ["eval", config, checkpoint],
        ["parity", "--onnx", graph, config, checkpoint],
        ["bench", "--onnx", graph, "--shape", "128x128"],
    ):
        result = CliRunner().invoke(main, [str(arg) for arg in (*args, "--report", report)])
        assert result.exit_code == 1 and "missing does not exist" in result.stderr, result.output
        assert result.stdout == "", result.stdout  # no metrics, parity table or timings: nothing ran


def test_predict_never_writes_over_its_images(shapes_student, tmp_path):
    import shutil

    photos = tmp_path / "photos"
    photos.mkdir()
    for path in list_images(shapes_student.config.data.root + "/val", max_images=2):
        shutil.copy(path, photos)
    before = {path.name: path.read_bytes() for path in photos.iterdir()}
    _user_error(["predict", "--onnx", shapes_student.onnx, photos, "-o", photos], "would replace the input")
    _user_error(["predict", "--onnx", shapes_student.onnx, photos, "-o", tmp_path / "photos" / ".." / "photos"], "would replace")
    assert {path.name: path.read_bytes() for path in photos.iterdir()} == before  # no detections.json either


def test_predict_refuses_two_images_written_under_one_name(shapes_student, tmp_path):
    from PIL import Image

    (source,) = list_images(shapes_student.config.data.root + "/val", max_images=1)
    both = tmp_path / "both"
    both.mkdir()
    Image.open(source).save(both / "a.jpg")
    Image.open(source).save(both / "a.bmp")  # annotated as a.jpg as well
    result = CliRunner().invoke(main, ["predict", "--onnx", str(shapes_student.onnx), str(both), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "a.bmp and" in result.stderr and "a.jpg would both be written as" in result.stderr and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "out").exists()
    # alone, a BMP is written as NAME.jpg, as the help says
    result = CliRunner().invoke(main, ["predict", "--onnx", str(shapes_student.onnx), str(both / "a.bmp"), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["a.jpg", "detections.json"]
    assert "other formats than JPEG/PNG as NAME.jpg" in " ".join(CliRunner().invoke(main, ["predict", "--help"]).output.split())


def test_predict_output_folder_that_cannot_be_made(shapes_student, tmp_path):
    (tmp_path / "file").write_text("in the way")
    _user_error(["predict", "--onnx", shapes_student.onnx, shapes_student.config.data.root + "/val", "--max-images", 1,
                 "-o", tmp_path / "file" / "out"], "the folder")  # fmt: skip


@pytest.mark.parametrize("device", ["banana", "mps", "meta", "cuda:x"])
def test_bench_refuses_a_device_it_does_not_know(shapes_student, device):
    args = ["bench", "--config", shapes_student.config_path, "--checkpoint", shapes_student.checkpoint, "--shape", "128x128"]
    _user_error([*args, "--device", device], "is not one of auto, cuda, cpu, cuda:N")


def test_options_the_model_would_ignore_are_refused(shapes_student, tmp_path):
    import onnxruntime

    graph = ["--onnx", shapes_student.onnx, "--shape", "128x128"]
    _user_error(["bench", *graph, "--dtype", "bf16"], "--dtype sets PyTorch's autocast for --checkpoint")
    _user_error(["bench", *graph, "--set", "test.score_thr=0.5"], "--config and --set apply to --checkpoint")
    _user_error(["bench", *graph, "--config", shapes_student.config_path], "--config and --set apply to --checkpoint")
    _user_error(["bench", *graph, "--device", "banana"], "for an ONNX model: give cpu or cuda")
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        _user_error(["bench", *graph, "--device", "cuda"], "this onnxruntime has no CUDA provider")
    images = [shapes_student.config.data.root + "/val", "--max-images", 1, "-o", tmp_path / "out"]
    _user_error(["predict", "--onnx", shapes_student.onnx, *images, "--set", "foo=1"], "--config and --set apply to --checkpoint")
    assert not (tmp_path / "out").exists()
    # --device cpu on an ONNX model: the CPU provider only
    result = CliRunner().invoke(main, ["bench", *map(str, graph), "--device", "cpu", "--runs", "1", "--warmup", "0"])
    assert result.exit_code == 0 and "onnxruntime CPUExecutionProvider" in result.output, result.output


def test_bench_says_what_a_config_is_missing(shapes_student):
    _user_error(["bench", "--config", shapes_student.config_path, "--shape", "128x128"], "--config needs --checkpoint CKPT")


def test_a_static_graph_takes_only_its_batch_in_predict_and_eval_as_in_bench(shapes_student, tmp_path):
    static = export_student(shapes_student.config, shapes_student.checkpoint, tmp_path / "static.onnx", ExportOptions(height=128, width=128)).path
    message = "is static: it takes batches of 1 only, not 2"
    _user_error(["bench", "--onnx", static, "--shape", "128x128", "--batch", "2"], message)
    _user_error(["predict", "--onnx", static, shapes_student.config.data.root + "/val", "-o", tmp_path / "out", "--batch", "2"], message)
    _user_error(["eval", shapes_student.config_path, "--onnx", static, "--batch", "2"], message)
    assert not (tmp_path / "out").exists()


def test_eval_compare_refuses_other_weights_than_the_graphs(shapes_student, tmp_path):
    weights = torch.load(shapes_student.checkpoint, weights_only=True)["model"]
    # the same weights in another file (latest.pth beside best.pth): compared
    copy = tmp_path / "copy.pth"
    torch.save({"model": weights, "note": "another file"}, copy)
    result = CliRunner().invoke(main, ["eval", str(shapes_student.config_path), str(copy), "--onnx", str(shapes_student.onnx)])
    assert result.exit_code == 0, result.output
    assert "difference (exported - checkpoint)" in result.output
    # other weights: refused before any evaluation
    other = tmp_path / "other.pth"
    torch.save({"model": {**weights, "head.gfl_cls.bias": weights["head.gfl_cls.bias"] + 0.01}}, other)
    args = ["eval", shapes_student.config_path, other, "--onnx", shapes_student.onnx]
    _user_error(args, f"{shapes_student.onnx} was exported from other weights than those of {other}")
    # a graph exported before the weights' hash was recorded: only its own file is taken
    old = tmp_path / "old.onnx"
    model = onnx.load(str(shapes_student.onnx))
    kept = [prop for prop in model.metadata_props if prop.key != "weights_sha256"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(old))
    _user_error(["eval", shapes_student.config_path, copy, "--onnx", old], "records no hash of its weights")
    assert CliRunner().invoke(main, ["eval", str(shapes_student.config_path), str(shapes_student.checkpoint), "--onnx", str(old)]).exit_code == 0
