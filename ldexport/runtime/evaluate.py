"""``evaluate_model``: COCO box AP of any runner, through the model's own input contract.

Every model (a checkpoint in PyTorch, an ONNX file in ONNX Runtime, a TensorRT engine)
sees the images as :meth:`InputSpec.to_feed <ldexport.data.input_spec.InputSpec.to_feed>`
makes them; the detections are mapped back to the files' pixels and scored by the same
evaluator (:func:`~ldexport.data.coco_eval.evaluate_coco`). Comparing a checkpoint with
its export on the export's contract (``ldexport eval --compare``) leaves the numerics as
the only difference.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ldexport.data.coco_eval import evaluate_coco
from ldexport.data.image_io import read_image
from ldexport.data.records import RecordSet
from ldexport.errors import LdexportError
from ldexport.model.detector import Detections
from ldexport.runtime.model import RuntimeModel

logger = logging.getLogger(__name__)


def evaluate_model(model: RuntimeModel, data: RecordSet, *, batch_size: int | None = None, progress: bool = False) -> dict[str, float]:
    """COCO box AP of ``model`` on ``data``.

    Args:
        model: the runner and its contract (:mod:`ldexport.runtime.model`).
        data: the validation records (ground truth, category ids, image files).
        batch_size: images a run for a dynamic model (1 when ``None``); a static one
            takes its own batch only (the last run filled up).
        progress: show a progress bar.

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl"}``.

    Raises:
        LdexportError: the model's classes differ from the data's, a batch a static model
            refuses, or an image is unreadable.
    """
    from tqdm import tqdm

    check_class_names(model, data.class_names)
    step = model.run_batch(batch_size)
    records = list(data)
    detections: dict[int, Detections] = {}
    with tqdm(total=len(records), desc=f"evaluate {model.name}", disable=None if progress else True, leave=False) as bar:
        for start in range(0, len(records), step):
            group = records[start : start + step]
            feed = model.spec.to_feed([read_image(record.path) for record in group], [record.path for record in group])
            for record, found in zip(group, model.detect(feed)):
                detections[record.image_id] = found
            bar.update(len(group))
    return evaluate_coco(detections, data)


def check_class_names(model: RuntimeModel, data_names: tuple[str, ...]) -> None:
    """Refuses a model whose labels do not mean the data's classes.

    A model without names of its own (``class_0 ...``) is taken as labelled in the data's
    order; one whose names are the data's in another order would score as if blind; other
    names (a renamed data set, say) are a warning.

    Raises:
        LdexportError: another number of classes, or the same names in another order.
    """
    names = model.class_names
    if len(names) != len(data_names):
        raise LdexportError(f"{model.source} detects {len(names)} classes, the data has {len(data_names)}")
    if names == data_names or names == tuple(f"class_{index}" for index in range(len(names))):
        return
    label = next(index for index, (mine, theirs) in enumerate(zip(names, data_names)) if mine != theirs)
    differ = f"label {label} is {names[label]!r} to {model.source}, {data_names[label]!r} to the data"
    if sorted(names) == sorted(data_names):
        raise LdexportError(f"{model.source} names the data's classes in another order ({differ}): its AP would mean nothing")
    logger.warning("warning: %s names its classes otherwise than the data (%s); labels are taken by index", model.source, differ)


@dataclass(frozen=True)
class Comparison:
    """The same data through a checkpoint and its export.

    Attributes:
        reference, candidate: each model's metrics.
        reference_name, candidate_name: what each was.
    """

    reference: dict[str, float]
    candidate: dict[str, float]
    reference_name: str
    candidate_name: str

    @property
    def difference(self) -> dict[str, float]:
        """``candidate - reference`` for every metric."""
        return {name: self.candidate[name] - self.reference[name] for name in self.reference}

    def to_json(self) -> dict:
        """As JSON-able data."""
        return {
            self.reference_name: self.reference,
            self.candidate_name: self.candidate,
            "difference": self.difference,
        }
