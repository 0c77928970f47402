"""The whole path on one command: data, teacher, LD student, export, parity, summary.

:func:`run_demo` is what ``ldexport demo`` runs. On its built-in default it generates the
shapes data set, trains a small GFL teacher, distils a smaller student from it with LD
(and, if asked, trains the same student without a teacher for comparison), exports the
student to ONNX twice (decoded boxes and scores; and with NMS in the graph), checks both
graphs against the PyTorch student with ONNX Runtime, builds and checks a TensorRT engine
where TensorRT and a GPU exist, and returns a :class:`DemoSummary`. Given real configs
(and, optionally, a trained teacher) it runs the same steps on real data.

The steps call the library the commands call: :func:`ldexport.engine.run.train`,
:func:`ldexport.export.student.export_student`, :func:`ldexport.runtime.parity.parity_session`
and :func:`ldexport.trt.build.build_engine`; never the CLI.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ldexport.config import Config, load_config
from ldexport.errors import LdexportError
from ldexport.io import atomic_write_text, make_folder

if TYPE_CHECKING:
    from ldexport.engine.run import TrainResult
    from ldexport.export.options import NmsKind
    from ldexport.parity.check import ParityReport

logger = logging.getLogger("ldexport.demo")

# Configs shipped with the repository (the built-in default of ``ldexport demo``).
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
DEFAULT_TEACHER = CONFIG_DIR / "shapes_gfl_teacher_tiny.yaml"
DEFAULT_STUDENT = CONFIG_DIR / "shapes_ld_tiny.yaml"


@dataclass
class ParitySummary:
    """One graph's parity check, condensed from its JSON report."""

    graph: str
    images: str
    passed: bool
    cases: int
    reference_detections: int
    matched: int
    max_box_error: float
    max_score_error: float
    report: Path


@dataclass
class DemoSummary:
    """What the demo produced: metrics, parity, and every artefact's path."""

    teacher_ap: float | None = None
    student_ap: float | None = None
    baseline_ap: float | None = None
    parity: list[ParitySummary] = field(default_factory=list)
    tensorrt: str = "not attempted"
    artefacts: dict[str, Path] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Every parity check passed (and there was one)."""
        return bool(self.parity) and all(item.passed for item in self.parity)


def run_demo(
    *,
    work_dir: Path,
    teacher_config: Config,
    student_config: Config,
    teacher_checkpoint: Path | None = None,
    baseline: bool = False,
    parity_images: Sequence[Path] = (),
    max_parity_images: int = 8,
    tensorrt: bool = True,
    overwrite: bool = False,
) -> DemoSummary:
    """Runs the whole path (see the module docstring).

    Args:
        work_dir: every artefact goes below it.
        teacher_config: the teacher's config (trained unless ``teacher_checkpoint``).
        student_config: the student's LD config.
        teacher_checkpoint: a trained teacher (ldexport or mmdet checkpoint).
        baseline: also train the student without a teacher, for the AP comparison.
        parity_images: folders of photographs for the parity check, besides the
            student's validation images.
        max_parity_images: photographs taken from each folder.
        tensorrt: build and check a TensorRT engine when TensorRT and CUDA exist.
        overwrite: delete an earlier demo's runs in ``work_dir`` instead of refusing.
    """
    from ldexport.engine.run import train
    from ldexport.export.options import ExportOptions
    from ldexport.export.student import export_student
    from ldexport.interop.checkpoint import read_checkpoint
    from ldexport.io import list_images
    from ldexport.parity.report import format_table, write_json
    from ldexport.runtime.parity import parity_session

    # The inputs are checked before an earlier demo is deleted and before minutes of training.
    if teacher_checkpoint is not None:
        read_checkpoint(teacher_checkpoint)
    photographs = [(folder, list_images(folder, max_images=max_parity_images)) for folder in parity_images]
    _prepare_work_dir(work_dir, overwrite)
    summary = DemoSummary()
    if teacher_checkpoint is None:
        _step("1/5 training the teacher (plain GFL)")
        teacher = train(teacher_config, work_dir=work_dir / "teacher")
        _check_not_stopped(teacher, "training the teacher", work_dir)
        teacher_checkpoint = teacher.best_checkpoint or teacher.latest_checkpoint
        summary.teacher_ap = teacher.best_ap
    summary.artefacts["teacher checkpoint"] = teacher_checkpoint

    _step("2/5 distilling the student with LD")
    student = train(student_config, work_dir=work_dir / "student", teacher_checkpoint=teacher_checkpoint)
    _check_not_stopped(student, "distilling the student", work_dir)
    checkpoint = student.best_checkpoint or student.latest_checkpoint
    summary.student_ap = student.best_ap
    summary.artefacts["student checkpoint"] = checkpoint
    if baseline:
        _step("2b/5 training the same student without a teacher (baseline)")
        baseline_run = train(student_config.without_teacher(), work_dir=work_dir / "baseline")
        _check_not_stopped(baseline_run, "training the baseline", work_dir)
        summary.baseline_ap = baseline_run.best_ap

    _step("3/5 exporting the student to ONNX (decoding in the graph; and with NMS)")
    dense, with_nms = work_dir / "student.onnx", work_dir / "student_nms.onnx"
    size = max(student_config.data.scale)
    graphs: tuple[tuple[Path, NmsKind], ...] = ((dense, "none"), (with_nms, "onnx"))
    for graph, nms in graphs:
        exported = export_student(student_config, checkpoint, graph, ExportOptions(height=size, width=size, dynamic=True, nms=nms))
        click.echo(f"wrote {graph}: {', '.join(exported.output_names)}")
    summary.artefacts.update({"ONNX (boxes, scores)": dense, "ONNX (with NMS)": with_nms})

    _step("4/5 checking parity: ONNX Runtime vs PyTorch")
    validation = _validation_images(student_config)
    listed = [(validation, list_images(validation, max_images=max_parity_images)), *photographs]
    for graph in (dense, with_nms):
        for index, (folder, paths) in enumerate(listed):
            report_path = graph.with_name(f"{graph.stem}_parity_{index}.json")
            report = parity_session(student_config, checkpoint, graph, images=paths, sizes=None)  # None: parity's default sizes
            click.echo(format_table(report))
            write_json(report, report_path, onnx=str(graph), checkpoint=str(checkpoint), images=str(folder))
            summary.parity.append(summarise_report(graph.name, report, report_path, images=folder.name))
            summary.artefacts[f"parity report ({graph.name}, {folder.name})"] = report_path

    _step("5/5 TensorRT")
    summary.tensorrt = _tensorrt(dense, student_config, checkpoint, validation, work_dir, summary) if tensorrt else "skipped"
    return summary


def _check_not_stopped(result: TrainResult, step: str, work_dir: Path) -> None:
    """Ends the demo where a SIGINT or SIGTERM stopped one of its trainings: the next steps
    would run on a model trained part of the way.

    Raises:
        LdexportError: the training was stopped.
    """
    if result.interrupted:
        raise LdexportError(
            f"stopped while {step} (iteration {result.iteration}); {work_dir} is incomplete: run the demo again with --overwrite"
        )


_RUN_DIRS = ("teacher", "student", "baseline")


def _prepare_work_dir(work_dir: Path, overwrite: bool) -> None:
    """Makes ``work_dir``; an earlier demo's runs in it are deleted only when asked, and
    only when they are training runs (a folder of another name's files is never deleted)."""
    earlier = [work_dir / name for name in _RUN_DIRS if (work_dir / name).exists()]
    if earlier and not overwrite:
        raise LdexportError(f"{work_dir} holds an earlier demo ({earlier[0].name}/): pass --overwrite or another --work-dir")
    foreign = [run for run in earlier if not (run / "config.yaml").is_file() and (run.is_file() or any(run.iterdir()))]
    if foreign:
        raise LdexportError(
            f"{foreign[0]} is not a training run of an earlier demo: move it away or use another --work-dir"
        )
    for run in earlier:
        shutil.rmtree(run)
    make_folder(work_dir)


def write_summary(summary: DemoSummary, path: Path) -> None:
    """Writes the summary as JSON (paths as strings), atomically."""
    data = asdict(summary)
    data["passed"] = summary.passed
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def _step(message: str) -> None:
    click.secho(f"\n== {message}", bold=True)


def summarise_report(graph: str, report: ParityReport, path: Path, images: str = "") -> ParitySummary:
    """Condenses a parity report: verdict, detections matched, largest errors."""
    results = [result for case in report.cases for result in case.results]
    box_errors = [result.detections.max_box_error for result in results]
    score_errors = [result.detections.max_score_error for result in results]
    for result in results:
        for stats in result.outputs:
            errors = box_errors if stats.name == "boxes" else score_errors if stats.name == "scores" else None
            if errors is not None:
                errors.append(stats.max_abs)
    return ParitySummary(
        graph=graph,
        images=images,
        passed=report.passed,
        cases=len(report.cases),
        reference_detections=sum(result.detections.reference for result in results),
        matched=sum(result.detections.matched for result in results),
        max_box_error=max(box_errors, default=0.0),
        max_score_error=max(score_errors, default=0.0),
        report=path,
    )


def _tensorrt(graph: Path, config: Config, checkpoint: Path, images: Path, work_dir: Path, summary: DemoSummary) -> str:
    from ldexport.io import list_images
    from ldexport.parity.report import write_json
    from ldexport.runtime.parity import parity_session
    from ldexport.trt.backend import backend_missing_reason

    missing = backend_missing_reason()
    if missing is not None:
        return f"skipped: {missing}"
    from ldexport.trt.build import build_engine

    engine = work_dir / "student.engine"
    build_engine(graph, engine)
    report_path = work_dir / "student_trt_parity.json"
    report = parity_session(config, checkpoint, graph, engine=engine, images=list_images(images, max_images=8))
    write_json(report, report_path, onnx=str(graph), engine=str(engine), checkpoint=str(checkpoint))
    summary.parity.append(summarise_report(engine.name, report, report_path, images=images.name))
    summary.artefacts["TensorRT engine"] = engine
    return "built and checked"


def _validation_images(config: Config) -> Path:
    """The folder of the student's validation images."""
    data = config.data
    root = Path(data.root)
    return root / "val" if data.format == "shapes" else root / data.val_images


def format_summary(summary: DemoSummary) -> str:
    """The summary printed at the end of the demo."""
    ap = lambda value: "-" if value is None else f"{value:.3f}"  # noqa: E731
    lines = [
        "",
        "== summary",
        f"teacher AP            {ap(summary.teacher_ap)}",
        f"student AP (LD)       {ap(summary.student_ap)}",
    ]
    if summary.baseline_ap is not None:
        lines.append(f"student AP (no LD)    {ap(summary.baseline_ap)}")
    lines.append("parity                graph on images / cases / detections matched / max box err px / max score err / verdict")
    for item in summary.parity:
        verdict = "PASS" if item.passed else "FAIL"
        lines.append(
            f"  {item.graph + ' on ' + item.images:<32} {item.cases:>3} cases  {item.matched}/{item.reference_detections} matched  "
            f"{item.max_box_error:.2e}  {item.max_score_error:.2e}  {verdict}"
        )
    lines.append(f"TensorRT              {summary.tensorrt}")
    lines.append("artefacts")
    lines += [f"  {name:<44} {path}" for name, path in summary.artefacts.items()]
    return "\n".join(lines)


def load_demo_configs(
    teacher: Path | None, student: Path | None, overrides: Sequence[str], load: Callable[..., Config] = load_config
) -> tuple[Config, Config]:
    """The teacher's and the student's configs; ``overrides`` apply to both.

    A teacher config given explicitly names the teacher's architecture for a student
    config that leaves ``distill.teacher`` unset (an mmdet teacher checkpoint does not
    say its architecture).
    """
    teacher_config = load(teacher or DEFAULT_TEACHER, overrides)
    student_config = load(student or DEFAULT_STUDENT, overrides)
    if teacher is not None and student_config.distill.teacher is None:
        distill = dataclasses.replace(student_config.distill, teacher=teacher_config.model)
        student_config = dataclasses.replace(student_config, distill=distill)
    return teacher_config, student_config
