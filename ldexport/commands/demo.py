"""``ldexport demo``: distil, export and verify in one command.

On the built-in default (no options) it runs on a CPU in minutes: it generates the shapes
data set, trains a small teacher, distils a smaller student with LD, exports it to ONNX
with the decoding (and NMS) in the graph, checks parity with ONNX Runtime (and TensorRT
where it exists), and prints a summary with every artefact's path::

    ldexport demo
    ldexport demo --baseline --images ../shared/data/coco128/images/train2017
    ldexport demo --teacher-config configs/gfl_r101_fpn_ms-2x_coco.yaml \\
        --student-config configs/ld_r18-gflv1-r101_fpn_1x_coco.yaml --teacher gfl_r101.pth
"""

from __future__ import annotations

from pathlib import Path

import click

_FILE = click.Path(dir_okay=False, path_type=Path)
_DIR = click.Path(file_okay=False, path_type=Path)


@click.command("demo")
@click.option("--work-dir", type=_DIR, default=Path("work_dirs/demo"), show_default=True, help="Where every artefact goes.")
@click.option("--teacher-config", type=_FILE, help="Teacher config [configs/shapes_gfl_teacher_tiny.yaml].")
@click.option("--student-config", type=_FILE, help="Student LD config [configs/shapes_ld_tiny.yaml].")
@click.option("--teacher", type=_FILE, help="A trained teacher checkpoint (skips teacher training).")
@click.option("--baseline", is_flag=True, help="Also train the student without LD and report both APs.")
@click.option("--images", "parity_images", type=click.Path(exists=True, file_okay=False, path_type=Path), multiple=True, help="More photographs for the parity check (repeatable).")
@click.option("--max-images", type=click.IntRange(min=1), default=8, show_default=True, help="Photographs per folder in the parity check.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier demo's runs in the work dir.")
@click.option("--no-tensorrt", is_flag=True, help="Do not build a TensorRT engine even where TensorRT exists.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a value in both configs (repeatable).")
def command(
    work_dir: Path,
    teacher_config: Path | None,
    student_config: Path | None,
    teacher: Path | None,
    baseline: bool,
    parity_images: tuple[Path, ...],
    max_images: int,
    overwrite: bool,
    no_tensorrt: bool,
    overrides: tuple[str, ...],
) -> None:
    """Train a teacher, distil a student with LD, export it, and check parity."""
    from ldexport.commands.train import setup_logging
    from ldexport.demo import format_summary, load_demo_configs, run_demo, write_summary

    setup_logging()
    teacher_cfg, student_cfg = load_demo_configs(teacher_config, student_config, overrides)
    summary = run_demo(
        work_dir=work_dir,
        teacher_config=teacher_cfg,
        student_config=student_cfg,
        teacher_checkpoint=teacher,
        baseline=baseline,
        parity_images=parity_images,
        max_parity_images=max_images,
        tensorrt=not no_tensorrt,
        overwrite=overwrite,
    )
    click.echo(format_summary(summary))
    write_summary(summary, work_dir / "summary.json")
    click.echo(f"  {'summary':<44} {work_dir / 'summary.json'}")
    if not summary.passed:
        raise click.exceptions.Exit(1)
