"""A detector behind any runner, with what it takes to feed it and read its outputs.

:class:`RuntimeModel` joins a :class:`~ldexport.parity.base.Runner` to the model's input
contract (:class:`~ldexport.data.input_spec.InputSpec`), decoding settings, strides and
class names, so that ``eval``, ``predict`` and ``bench`` treat a checkpoint, an ONNX file
and a TensorRT engine alike::

    model = open_onnx("student.onnx")           # or open_engine(...), open_checkpoint(cfg, ckpt)
    feed = model.spec.read(["a.jpg", "b.jpg"])
    detections = model.detect(feed)              # per image, in the file's pixels

An ONNX file carries all of it in its metadata, an engine in its sidecar (copied from the
ONNX file it was built from), a checkpoint in its config (training's resize rule).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ldexport.config import Config
from ldexport.data.input_spec import Feed, InputSpec
from ldexport.data.pipeline import boxes_to_original
from ldexport.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ldexport.devices import torch_device
from ldexport.errors import LdexportError
from ldexport.export.metadata import ExportInfo, read_export_info, read_onnx_info
from ldexport.interop.checkpoint import LoadedDetector, load_detector
from ldexport.model.detector import Detections, TestConfig
from ldexport.parity.base import Runner
from ldexport.parity.detections import graph_detections
from ldexport.parity.runners import OnnxRuntimeRunner, TorchRunner


@dataclass
class RuntimeModel:
    """A runner and how to feed it and read it.

    Attributes:
        runner: runs the network (and decoding, NMS as the graph has them).
        spec: the input contract.
        test_cfg: the decoding settings (dense outputs are post-processed with them).
        strides: the head's strides.
        class_names: ``C`` names, label order.
        source: the file it came from.
        info: an exported model's metadata (``None`` for a checkpoint).
        loaded: a checkpoint's detector, file hash and weights hash (``None`` for an
            exported model).
    """

    runner: Runner
    spec: InputSpec
    test_cfg: TestConfig
    strides: tuple[int, ...]
    class_names: tuple[str, ...]
    source: Path
    info: ExportInfo | None = None
    loaded: LoadedDetector | None = None

    @property
    def name(self) -> str:
        """The runner's name (``pytorch``, ``onnxruntime``, ``tensorrt``)."""
        return self.runner.name

    @property
    def batch_size(self) -> int | None:
        """The fixed batch of a static model, else ``None``."""
        return self.spec.fixed_batch

    def run_batch(self, batch: int | None, default: int = 1) -> int:
        """The images a run: a static model's own batch, else ``batch`` (``default`` when ``None``).

        Raises:
            LdexportError: ``batch`` given and not the batch a static model takes.
        """
        fixed = self.spec.fixed_batch
        if fixed is not None and batch is not None and batch != fixed:
            raise LdexportError(f"{self.source} is static: it takes batches of {fixed} only, not {batch}")
        if batch is not None and batch < 1:
            raise LdexportError(f"a batch has at least one image, not {batch}")
        return fixed or batch or max(1, default)

    def detect(self, feed: Feed) -> list[Detections]:
        """Detections of each real image of ``feed``, in the pixels of its file.

        Boxes are clipped to the resized image (as ``predict`` clips to the unpadded size),
        then mapped back by the image's scale factor.
        """
        if isinstance(self.runner, TorchRunner):
            found = self.runner.predict(feed.feeds)
        else:
            input_size = (feed.images.shape[1], feed.images.shape[2]) if self.spec.preprocess_in_graph else feed.images.shape[2:]
            outputs = self.runner.infer(feed.feeds)
            found = graph_detections(outputs, input_size=tuple(input_size), strides=self.strides, test_cfg=self.test_cfg)
        results = []
        for detections, meta in zip(found, feed.metas):
            height, width = meta.image_size
            # [K, 4] clipped to the resized image, then in the file's pixels
            boxes = torch.minimum(detections.boxes.float().clamp(min=0), torch.tensor([width, height, width, height]))
            results.append(Detections(boxes_to_original(boxes, meta), detections.scores.float(), detections.labels.long()))
        return results

    def detect_files(self, paths: Sequence[str | Path]) -> list[Detections]:
        """Reads image files and detects (:meth:`detect`)."""
        return self.detect(self.spec.read(paths))


def open_onnx(path: str | Path, providers: Sequence[str] | None = None) -> RuntimeModel:
    """An ldexport ONNX file in ONNX Runtime (every installed provider, CPU last).

    Raises:
        LdexportError: not an ldexport graph, or one onnxruntime cannot run (TensorRT's
            NMS plugin).
    """
    info = read_onnx_info(path)
    if info.nms == "efficient":
        raise LdexportError(f"{path} uses TensorRT's EfficientNMS_TRT plugin, which onnxruntime cannot run: build an engine")
    return _from_info(OnnxRuntimeRunner(path, providers), info, Path(path))


def open_engine(path: str | Path) -> RuntimeModel:
    """A TensorRT engine built by ``ldexport trt`` (its sidecar holds the ONNX metadata).

    Raises:
        LdexportError: no TensorRT or GPU, a sidecar missing or from another TensorRT or
            GPU, an engine not built from an ldexport graph.
    """
    from ldexport.trt.sidecar import read_sidecar

    path = Path(path)
    if not path.is_file():
        raise LdexportError(f"no engine file {path}")
    sidecar = read_sidecar(path)
    metadata = (sidecar or {}).get("onnx", {}).get("metadata")
    if not isinstance(metadata, dict):
        raise LdexportError(f"{path} has no sidecar with its ONNX model's ldexport metadata: rebuild it with `ldexport trt`")
    info = read_export_info(metadata, f"{path}'s sidecar")
    return _from_info(tensorrt_runner(path), info, path)


def open_checkpoint(
    config: Config,
    checkpoint: str | Path,
    *,
    spec: InputSpec | None = None,
    device: torch.device | str = "cpu",
    autocast: torch.dtype | None = None,
) -> RuntimeModel:
    """The PyTorch student of ``config`` with the weights of ``checkpoint``.

    Args:
        config: the student's config (``model``, ``test``, ``data.scale``).
        checkpoint: ldexport or mmdet weights (the ImageNet file is not needed).
        spec: the input contract; training's (keep-ratio to ``config.data.scale``) when
            ``None``. ``eval --compare`` passes the exported model's.
        device, autocast: where and in which precision the network runs.
    """
    device = torch_device(str(device))
    loaded = load_detector(config.model, checkpoint)
    spec = spec or InputSpec(resize="keep_ratio", scale=tuple(config.data.scale), mean=IMAGENET_MEAN, std=IMAGENET_STD)  # type: ignore[arg-type]
    runner = TorchRunner(loaded.model, test_cfg=config.test, spec=spec, device=device, autocast=autocast)
    return RuntimeModel(
        runner=runner,
        spec=spec,
        test_cfg=config.test,
        strides=tuple(config.model.strides),
        class_names=loaded.class_names,
        source=Path(checkpoint),
        loaded=loaded,
    )


def open_model(
    *,
    onnx: str | Path | None = None,
    engine: str | Path | None = None,
    config: str | Path | None = None,
    checkpoint: str | Path | None = None,
    overrides: Sequence[str] = (),
    device: str | None = None,
    dtype: str | None = None,
) -> RuntimeModel:
    """The one model named by a command's options: ``onnx``, ``engine``, or ``config`` +
    ``checkpoint`` (with ``overrides``).

    Args:
        device: PyTorch: :func:`torch_device` (cpu when ``None``); ONNX:
            :func:`onnx_providers` (every installed provider when ``None``). Not for an
            engine.
        dtype: PyTorch only: ``fp32`` or ``bf16`` (autocast).

    Raises:
        LdexportError: none or several models given, a checkpoint without its config (or
            the reverse), or an option the chosen model does not take (``--set``,
            ``--dtype``, ``--device``): it would have no effect.
    """
    from ldexport.config import load_config

    given = [value for value in (onnx, engine, checkpoint) if value is not None]
    if len(given) > 1:
        raise LdexportError(
            f"give exactly one model: --onnx MODEL, --engine ENGINE or --config CONFIG --checkpoint CKPT (got {len(given)})"
        )
    if not given:
        if config is not None:
            raise LdexportError("--config needs --checkpoint CKPT (or give --onnx MODEL or --engine ENGINE instead)")
        raise LdexportError("give exactly one model: --onnx MODEL, --engine ENGINE or --config CONFIG --checkpoint CKPT (got none)")
    if checkpoint is None:
        exported = f"--onnx {onnx}" if onnx is not None else f"--engine {engine}"
        carries = "its settings are in its metadata" if onnx is not None else "its settings are in its sidecar"
        if config is not None or overrides:
            raise LdexportError(f"--config and --set apply to --checkpoint, not to {exported} ({carries})")
        if dtype is not None:
            raise LdexportError(f"--dtype sets PyTorch's autocast for --checkpoint; {exported} runs in the precision it was exported or built in")
    if engine is not None:
        if device is not None:
            raise LdexportError(f"--device does not apply to --engine {engine}: an engine runs on the GPU it was built for")
        return open_engine(engine)
    if onnx is not None:
        return open_onnx(onnx, onnx_providers(device))
    if config is None:
        raise LdexportError("--checkpoint needs --config CONFIG")
    autocast = torch.bfloat16 if dtype == "bf16" else None
    return open_checkpoint(load_config(config, overrides), checkpoint, device=device or "cpu", autocast=autocast)  # type: ignore[arg-type]


def model_files(
    *,
    onnx: str | Path | None = None,
    engine: str | Path | None = None,
    config: str | Path | None = None,
    checkpoint: str | Path | None = None,
) -> list[Path]:
    """The files a command reads its model from (an engine's sidecar too): what its
    outputs must not replace (:func:`ldexport.io.check_not_an_input`)."""
    from ldexport.trt.sidecar import sidecar_path

    files = [Path(path) for path in (onnx, engine, config, checkpoint) if path is not None]
    return files + ([sidecar_path(Path(engine))] if engine is not None else [])


def onnx_providers(device: str | None) -> list[str] | None:
    """ONNX Runtime's providers for a ``--device``: ``None`` (every installed one, CUDA
    first) when ``device`` is ``None``, the CPU's for ``cpu``, CUDA's then the CPU's for
    ``cuda``.

    Raises:
        LdexportError: another device, or ``cuda`` where onnxruntime has no CUDA provider.
    """
    if device is None:
        return None
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device not in ("cuda", "cuda:0"):
        raise LdexportError(f"--device {device!r} for an ONNX model: give cpu or cuda (without --device: every installed provider, CUDA first)")
    import onnxruntime as ort

    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise LdexportError(
            f"--device {device}: this onnxruntime has no CUDA provider (installed: {', '.join(available)}); "
            "install onnxruntime-gpu, or give --device cpu"
        )
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def tensorrt_runner(engine_path: str | Path) -> Runner:
    """The TensorRT runner of :mod:`ldexport.trt.runner`, imported only when asked for.

    Raises:
        LdexportError: TensorRT or a CUDA GPU is missing, or the engine cannot be loaded.
    """
    from ldexport.trt.backend import require_tensorrt

    require_tensorrt()
    from ldexport.trt.runner import TensorRTRunner

    return TensorRTRunner(Path(engine_path))


def _from_info(runner: Runner, info: ExportInfo, source: Path) -> RuntimeModel:
    return RuntimeModel(
        runner=runner,
        spec=info.input_spec,
        test_cfg=info.test_cfg,
        strides=tuple(info.model_config.strides),
        class_names=info.class_names,
        source=source,
        info=info,
    )
