"""``ldexport predict``: detections on image files, drawn, and as COCO results JSON.

Examples::

    ldexport predict --onnx student.onnx photos/ -o predictions/
    ldexport predict --engine student.engine a.jpg b.jpg -o predictions/ --score-thr 0.5
    ldexport predict --config CONFIG --checkpoint CKPT photos/ -o predictions/ --max-images 20

The output folder gets every image annotated (boxes, class names, scores) under its own
file name (JPEG and PNG keep theirs, other formats are written as JPEG: ``a.bmp`` ->
``a.jpg``) and ``detections.json`` (COCO results, boxes in the files' pixels). Nothing is
written when two images would get the same output name or an output would replace an
input (``-o`` the images' own folder, say).
"""

from __future__ import annotations

from pathlib import Path

import click

_FILE = click.Path(dir_okay=False, path_type=Path)


@click.command("predict")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True,
    help="Folder for the results: each image under its own name (other formats than JPEG/PNG as NAME.jpg); "
    "refused when two images would get one name, or an output would replace an input.",
)  # fmt: skip
@click.option("--onnx", "onnx_path", type=_FILE, help="An ONNX model (ldexport onnx), run in ONNX Runtime.")
@click.option("--engine", type=_FILE, help="A TensorRT engine (ldexport trt).")
@click.option("--config", type=_FILE, help="With --checkpoint: the PyTorch student.")
@click.option("--checkpoint", type=_FILE, help="With --config: the student's weights (ldexport or mmdet).")
@click.option("--score-thr", type=click.FloatRange(0, 1), default=0.3, show_default=True, help="Draw and write detections above it.")
@click.option("--max-images", type=click.IntRange(min=1), help="Use the first N images only.")
@click.option("--batch", type=click.IntRange(min=1), help="Images a run [1; a static model: its own batch, no other].")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a value of --config (repeatable; with --checkpoint only).")
def command(
    images: tuple[Path, ...],
    output: Path,
    onnx_path: Path | None,
    engine: Path | None,
    config: Path | None,
    checkpoint: Path | None,
    score_thr: float,
    max_images: int | None,
    batch: int | None,
    overrides: tuple[str, ...],
) -> None:
    """Detect objects on IMAGES (files and folders) with one model; write annotated copies to -o."""
    from ldexport.io import list_images
    from ldexport.runtime.model import model_files, open_model
    from ldexport.runtime.predict import RESULTS_FILE, predict_images

    model = open_model(onnx=onnx_path, engine=engine, config=config, checkpoint=checkpoint, overrides=overrides)
    paths = list_images(images, max_images=max_images)
    inputs = model_files(onnx=onnx_path, engine=engine, config=config, checkpoint=checkpoint)
    predictions = predict_images(model, paths, output, score_thr=score_thr, batch_size=batch, inputs=inputs)
    total = sum(len(prediction.detections.scores) for prediction in predictions)
    click.echo(f"{len(predictions)} images, {total} detections above {score_thr} with {model.name}: {output}/ and {output / RESULTS_FILE}")
