"""``export_student``: a trained student, from its config and checkpoint, to an ONNX file.

What ``ldexport onnx`` and the demo run::

    from ldexport.export.options import ExportOptions
    from ldexport.export.student import export_student

    exported = export_student(config, "best.pth", "student.onnx", ExportOptions(dynamic=True, nms="onnx"))
    exported.path, exported.info.input_spec, exported.output_names
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ldexport.config import Config
from ldexport.data.input_spec import InputSpec
from ldexport.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ldexport.export.deploy import build_deploy_model
from ldexport.export.exporter import export_onnx
from ldexport.export.metadata import ExportInfo, export_metadata, read_export_info
from ldexport.export.options import ExportOptions
from ldexport.interop.checkpoint import load_detector

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportedModel:
    """What :func:`export_student` wrote.

    Attributes:
        path: the ONNX file.
        info: its metadata, as every consumer reads it back (input contract, classes,
            decoding settings, TensorRT profile).
        output_names: the graph's outputs, in order.
    """

    path: Path
    info: ExportInfo
    output_names: tuple[str, ...]


def export_student(config: Config, checkpoint: str | Path, output: str | Path, options: ExportOptions) -> ExportedModel:
    """Exports the student of ``config`` with the weights of ``checkpoint`` (ldexport or mmdet).

    The backbone's ImageNet file named in the config is not needed. The graph's input
    contract records training's resize rule (``config.data.scale``) for a dynamic graph,
    a letterbox into the export size for a static one. A dynamic graph's TensorRT profile
    reaches the largest input that rule makes unless ``options`` set it (a warning where
    they set it smaller).

    Raises:
        LdexportError: bad options, a checkpoint that is missing or does not match the
            config, an output folder that does not exist.
    """
    options.validate()
    spec = InputSpec.for_graph(
        preprocess=options.preprocess,
        dynamic=options.dynamic,
        size=(options.height, options.width),
        batch=options.batch,
        scale=config.data.scale,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )
    if options.dynamic:
        contract = spec.largest_input()
        _check_profile_covers(options.largest_input(contract), contract, config.data.scale)
    loaded = load_detector(config.model, checkpoint)
    deploy = build_deploy_model(
        loaded.model,
        test_cfg=config.test,
        nms=options.nms,
        preprocess=options.preprocess,
        mean=spec.mean,
        std=spec.std,
        static_size=None if options.dynamic else (options.height, options.width),
    )
    metadata = export_metadata(
        options=options,
        model_config=config.model,
        test_cfg=config.test,
        class_names=loaded.class_names,
        checkpoint_sha256=loaded.checkpoint_sha256,
        weights_sha256=loaded.weights_sha256,
        input_spec=spec,
    )
    path = export_onnx(deploy, output, options=options, metadata=metadata)
    return ExportedModel(path=path, info=read_export_info(metadata, str(path)), output_names=deploy.output_names)


def _check_profile_covers(largest: tuple[int, int], contract: tuple[int, int], scale: tuple[int, int]) -> None:
    """Warns where the TensorRT profile's largest input is below the largest input the
    graph's input contract makes: an engine would refuse those images."""
    if largest[0] < contract[0] or largest[1] < contract[1]:
        _LOG.warning(
            "warning: the largest input %dx%d is below the %dx%d that data.scale %s makes of a large image: "
            "a TensorRT engine would refuse such images (give --max-shape %dx%d)",
            *largest, *contract, list(scale), *contract,
        )
