"""``predict_images``: a model's detections on image files, as annotated images and a COCO
results JSON.

For every image ``photo.jpg`` the output folder gets ``photo.jpg`` annotated (PNG files
stay PNG; other formats become JPEG: ``photo.bmp`` -> ``photo.jpg``; two images that would
be written to one file are refused, as is an output that would replace an input), and ``detections.json`` holds the COCO results
list of all of them: ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` in the
file's pixels, plus ``file_name`` and ``category_name``. ``image_id`` is the position of
the file in the list; ``category_id`` is the model's label (``0..C-1``). Every file is
written atomically.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ldexport.errors import LdexportError
from ldexport.io import atomic_write_bytes, atomic_write_text, check_not_an_input, make_folder
from ldexport.model.detector import Detections
from ldexport.runtime.draw import draw_detections
from ldexport.runtime.model import RuntimeModel

RESULTS_FILE = "detections.json"


@dataclass(frozen=True)
class Prediction:
    """One image's detections (file pixels) and the annotated file written for it."""

    path: Path
    detections: Detections
    annotated: Path


def predict_images(
    model: RuntimeModel,
    paths: Sequence[Path],
    output_dir: str | Path,
    *,
    score_thr: float = 0.3,
    batch_size: int | None = None,
    inputs: Sequence[str | Path] = (),
) -> list[Prediction]:
    """Detects objects on ``paths`` and writes the annotated images and ``detections.json``.

    Args:
        model: the runner and its contract.
        paths: image files.
        output_dir: created if missing.
        score_thr: detections at or below it are neither drawn nor written.
        batch_size: images a run for a dynamic model (1 when ``None``); a static model
            takes its own batch.
        inputs: the model's files, which no output may replace either.

    Raises:
        LdexportError: before anything is written: two inputs whose annotated copies would
            have the same name (:func:`annotated_name`), an output that would replace an
            input (an image, the model), a folder that cannot be made, a batch a static
            model refuses; then an unreadable image.
    """
    output_dir = Path(output_dir)
    targets = check_outputs(paths, output_dir, inputs)
    step = model.run_batch(batch_size)
    make_folder(output_dir)
    predictions: list[Prediction] = []
    for start in range(0, len(paths), step):
        group = list(paths[start : start + step])
        for path, found in zip(group, model.detect_files(group)):
            keep = found.scores > score_thr
            kept = Detections(found.boxes[keep], found.scores[keep], found.labels[keep])
            predictions.append(Prediction(path, kept, _write_annotated(path, kept, model.class_names, targets[path])))
    atomic_write_text(output_dir / RESULTS_FILE, json.dumps(coco_results(predictions, model.class_names)) + "\n")
    return predictions


def annotated_name(path: Path) -> str:
    """The file name of ``path``'s annotated copy: its own for JPEG and PNG files, the
    stem and ``.jpg`` for other formats (``a.bmp`` -> ``a.jpg``)."""
    return path.name if path.suffix.lower() in (".png", ".jpg", ".jpeg") else path.stem + ".jpg"


def check_outputs(paths: Sequence[Path], output_dir: Path, inputs: Sequence[str | Path] = ()) -> dict[Path, Path]:
    """Each image's annotated file in ``output_dir``, checked before anything is written.

    Raises:
        LdexportError: two images would be written to the same file, an annotated image
            would replace one of ``paths``, or ``detections.json`` one of ``paths`` or
            ``inputs``.
    """
    images = {path.resolve(): path for path in paths}  # resolved once: thousands of images
    targets: dict[Path, Path] = {}
    by_target: dict[Path, Path] = {}
    for path in paths:
        target = output_dir / annotated_name(path)
        resolved = target.resolve()
        earlier = by_target.setdefault(resolved, path)
        if earlier != path:
            raise LdexportError(
                f"{earlier} and {path} would both be written as {target}: rename one, or predict them into separate -o folders"
            )
        if resolved in images:
            raise LdexportError(f"the output {target} would replace the input {images[resolved]}: give another -o")
        targets[path] = target
    results = output_dir / RESULTS_FILE
    if results.resolve() in images:
        raise LdexportError(f"the output {results} would replace the input {images[results.resolve()]}: give another -o")
    check_not_an_input(results, inputs)
    return targets


def coco_results(predictions: Sequence[Prediction], class_names: Sequence[str]) -> list[dict]:
    """The COCO results list of ``predictions`` (see the module doc)."""
    results = []
    for image_id, prediction in enumerate(predictions):
        found = prediction.detections
        for box, score, label in zip(found.boxes.tolist(), found.scores.tolist(), found.labels.tolist()):
            x1, y1, x2, y2 = box
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(label),
                    "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                    "score": round(float(score), 5),
                    "file_name": prediction.path.name,
                    "category_name": class_names[int(label)],
                }
            )
    return results


def _write_annotated(path: Path, detections: Detections, class_names: Sequence[str], target: Path) -> Path:
    try:
        with Image.open(path) as image:
            annotated = draw_detections(image, detections, class_names)
    except OSError as error:
        raise LdexportError(f"{path}: cannot read image ({error})") from None
    buffer = io.BytesIO()
    if target.suffix.lower() == ".png":
        annotated.save(buffer, format="PNG")
    else:  # full-resolution colour (4:4:4): thin coloured lines keep their colour
        annotated.save(buffer, format="JPEG", quality=95, subsampling=0)
    return atomic_write_bytes(target, buffer.getvalue())
