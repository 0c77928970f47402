"""The AP of an exported model equals its checkpoint's, through one input contract."""

import dataclasses
import json

from click.testing import CliRunner

from ldexport.cli import main
from ldexport.engine.data import load_split
from ldexport.engine.run import evaluate_checkpoint
from ldexport.runtime.evaluate import evaluate_model
from ldexport.runtime.model import open_checkpoint, open_onnx

AP_TOLERANCE = 0.0005


def test_onnx_ap_equals_the_checkpoint_on_the_shapes_validation_set(shapes_student):
    data = load_split(shapes_student.config.data, "val")
    exported = open_onnx(shapes_student.onnx)
    checkpoint = open_checkpoint(shapes_student.config, shapes_student.checkpoint, spec=exported.spec)
    onnx_metrics = evaluate_model(exported, data)
    torch_metrics = evaluate_model(checkpoint, data)
    one_a_batch = dataclasses.replace(shapes_student.config.data, val_batch_size=1)  # the same padding as the feed
    training_metrics = evaluate_checkpoint(dataclasses.replace(shapes_student.config, data=one_a_batch), shapes_student.checkpoint)
    print(f"shapes val AP: checkpoint {torch_metrics['AP']:.4f}, ONNX {onnx_metrics['AP']:.4f}, training's evaluate {training_metrics['AP']:.4f}")
    assert torch_metrics["AP"] > 0.02  # the student detects: the comparison means something
    for name, value in torch_metrics.items():
        assert abs(onnx_metrics[name] - value) <= AP_TOLERANCE, (name, onnx_metrics[name], value)
    # the contract is training's validation pipeline: the same AP as training reports
    assert abs(training_metrics["AP"] - torch_metrics["AP"]) <= AP_TOLERANCE


def test_eval_compare_on_a_coco128_trained_student(coco128_student, tmp_path):
    report = tmp_path / "metrics.json"
    args = ["eval", str(coco128_student.config_path), str(coco128_student.checkpoint), "--onnx", str(coco128_student.onnx),
            "--compare", "--report", str(report)]  # fmt: skip
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "difference (exported - checkpoint)" in result.output
    data = json.loads(report.read_text())
    (checkpoint_name, onnx_name) = [name for name in data if name != "difference"]
    print(f"coco128 AP: {data[checkpoint_name]['AP']:.4f} checkpoint, {data[onnx_name]['AP']:.4f} ONNX")
    assert checkpoint_name.startswith("pytorch") and onnx_name.startswith("onnxruntime")
    assert data[checkpoint_name]["AP"] > 0.02
    assert all(abs(value) <= AP_TOLERANCE for value in data["difference"].values()), data["difference"]
    assert data["difference"]["AP"] == data[onnx_name]["AP"] - data[checkpoint_name]["AP"]


def test_eval_of_an_onnx_model_alone(shapes_student, tmp_path):
    args = ["eval", str(shapes_student.config_path), "--onnx", str(shapes_student.onnx), "--report", str(tmp_path / "m.json")]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (metrics,) = json.loads((tmp_path / "m.json").read_text()).values()
    assert set(metrics) == {"AP", "AP50", "AP75", "APs", "APm", "APl"} and metrics["AP"] > 0.02


def test_batch_applies_to_the_checkpoint_alone_and_compared_and_is_printed(shapes_student, tmp_path):
    def run(*args):
        result = CliRunner().invoke(main, ["eval", str(shapes_student.config_path), str(shapes_student.checkpoint), *map(str, args)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    alone_report, compared_report = tmp_path / "alone.json", tmp_path / "compared.json"
    assert "1 images a batch\n" in run("--batch", 1, "--report", alone_report)
    assert "1 images a batch\n" in run("--onnx", shapes_student.onnx, "--batch", 1, "--report", compared_report)
    alone = json.loads(alone_report.read_text())
    compared = next(metrics for name, metrics in json.loads(compared_report.read_text()).items() if name.startswith("pytorch"))
    # one checkpoint, one batch: one AP, whichever command asked
    assert abs(alone["AP"] - compared["AP"]) <= AP_TOLERANCE, (alone, compared)
    # without --batch: the config's data.val_batch_size, said
    assert f"{shapes_student.config.data.val_batch_size} images a batch\n" in run("--onnx", shapes_student.onnx)
    help_text = " ".join(CliRunner().invoke(main, ["eval", "--help"]).output.split())
    assert "CHECKPOINT alone or compared included" in help_text


def test_compare_decodes_the_checkpoint_with_the_exported_models_settings(shapes_student, tmp_path):
    """A graph exported with other test settings than the config's (``ldexport onnx --set
    test.score_thr=...``): ``--compare`` must post-process the checkpoint as the graph
    does, or its difference measures the settings, not the numerics."""
    from ldexport.export.options import ExportOptions
    from ldexport.export.student import export_student

    config = shapes_student.config
    strict = dataclasses.replace(config.test, score_thr=0.3, max_per_img=3)
    size = max(config.data.scale)
    onnx = export_student(
        dataclasses.replace(config, test=strict), shapes_student.checkpoint, tmp_path / "strict.onnx",
        ExportOptions(height=size, width=size, dynamic=True),
    ).path  # fmt: skip
    report = tmp_path / "metrics.json"
    args = ["eval", str(shapes_student.config_path), str(shapes_student.checkpoint), "--onnx", str(onnx), "--report", str(report)]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    (checkpoint_name, onnx_name) = [name for name in data if name != "difference"]
    # the settings matter: the same weights at the config's settings score another AP
    default = evaluate_model(open_onnx(shapes_student.onnx), load_split(config.data, "val"))
    assert abs(default["AP"] - data[onnx_name]["AP"]) > 10 * AP_TOLERANCE, (default, data[onnx_name])
    assert all(abs(value) <= AP_TOLERANCE for value in data["difference"].values()), data["difference"]


def test_the_models_class_names_must_mean_the_datas(shapes_student, caplog):
    import dataclasses as dc
    import logging

    import pytest

    from ldexport.errors import LdexportError
    from ldexport.runtime.evaluate import check_class_names

    model = open_onnx(shapes_student.onnx)
    assert model.class_names == ("circle", "square", "triangle")
    check_class_names(model, ("circle", "square", "triangle"))
    with pytest.raises(LdexportError, match="in another order \\(label 0 is 'circle' to .*, 'square' to the data\\)"):
        check_class_names(model, ("square", "circle", "triangle"))
    with pytest.raises(LdexportError, match="detects 3 classes, the data has 2"):
        check_class_names(model, ("circle", "square"))
    with caplog.at_level(logging.WARNING, logger="ldexport.runtime.evaluate"):
        check_class_names(model, ("round", "square", "triangle"))
    assert "names its classes otherwise than the data (label 0 is 'circle'" in caplog.text
    # a model without names of its own takes the data's order
    check_class_names(dc.replace(model, class_names=("class_0", "class_1", "class_2")), ("square", "circle", "triangle"))
