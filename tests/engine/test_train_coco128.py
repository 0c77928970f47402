"""An LD run on coco128, end to end: training, evaluation, checkpoints, logs."""

import dataclasses
import math
from statistics import mean

import torch

from ldexport.config import config_to_dict, load_config
from ldexport.data.coco_eval import METRICS
from ldexport.engine.build import build_criterion, build_teacher
from ldexport.engine.data import build_val_loader, load_split
from ldexport.engine.monitor import read_log
from ldexport.engine.run import train
from ldexport.interop.checkpoint import read_checkpoint
from ldexport.model import build_detector
from ldexport.model.fuse import FrozenTeacher

from .conftest import COCO128, ldexport, requires_coco128, small_config

pytestmark = requires_coco128


def test_ld_run_trains_the_student_only_and_evaluates(tmp_path, teacher_checkpoint):
    # 4 images without flips, batch 2: 2 iterations an epoch; evaluation after epochs 5 and 10.
    config = small_config(
        "data.max_images=4", "data.flip_prob=0", "train.lr=0.4", "train.epochs=10", "train.eval_interval=5",
        "train.checkpoint_interval=3",
    )
    # the teacher runs as a FrozenTeacher: the checkpoint's neck and head, its backbone folded
    teacher_weights = FrozenTeacher(build_teacher(config.distill, teacher_checkpoint)).state_dict()
    work_dir = tmp_path / "run"

    result = train(config, work_dir=work_dir, teacher_checkpoint=teacher_checkpoint)

    assert result.iteration == 20 and result.epochs_done == 10 and not result.interrupted
    # The teacher is frozen: same weights, no gradients, not in the optimizer or checkpoint.
    assert result.teacher.state_dict().keys() == teacher_weights.keys()
    assert all(torch.equal(value, teacher_weights[key]) for key, value in result.teacher.state_dict().items())
    assert not any(p.requires_grad for p in result.teacher.parameters())
    latest = read_checkpoint(result.latest_checkpoint)
    assert latest["format"] == "ldexport" and latest["iteration"] == 20 and latest["epoch"] == 10
    assert latest["model"].keys() == result.student.state_dict().keys()
    trainable = [p for p in result.student.parameters() if p.requires_grad]
    assert len(latest["optimizer"]["param_groups"][0]["params"]) == len(trainable)

    # LD pulled the student's distributions to the teacher's: on a fixed batch and with
    # the positives weighted alike (by the initial student's scores), loss_ld fell.
    logged = [record["loss_ld"] for record in read_log(work_dir, "train")]
    assert len(logged) == 20 and all(math.isfinite(value) for value in logged)
    initial = _initial_student(config)
    before = _fixed_weight_loss_ld(initial, initial, result.teacher, config)
    after = _fixed_weight_loss_ld(result.student, initial, result.teacher, config)
    print(f"loss_ld on a fixed batch: {before:.4f} before, {after:.4f} after; logged first 4 "
          f"{mean(logged[:4]):.4f}, last 4 {mean(logged[-4:]):.4f}")
    assert after < 0.6 * before  # plain GFL training leaves it at ~0.96 of before

    # Evaluation ran after epochs 5 and 10; best.pth holds the best AP's student.
    evaluations = read_log(work_dir, "eval")
    assert [record["epoch"] for record in evaluations] == [5, 10]
    assert result.metrics == {name: evaluations[-1][name] for name in METRICS}
    best = read_checkpoint(result.best_checkpoint)
    assert best["metrics"]["AP"] == result.best_ap == max(record["AP"] for record in evaluations)
    assert load_config(work_dir / "config.yaml") == config
    assert latest["config"] == config_to_dict(config)

    # The CLI evaluates the last checkpoint to the same numbers.
    overrides = [item for o in ("data.max_images=4", "train.device=cpu", f"data.root={COCO128}") for item in ("--set", o)]
    run = ldexport("eval", "configs/coco128_ld_tiny.yaml", result.latest_checkpoint, *overrides)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == " ".join(f"{m} {result.metrics[m]:.4f}" for m in METRICS)


def _initial_student(config):
    torch.manual_seed(config.train.seed)  # as train() seeds before building the student
    return build_detector(config.model).eval()


def _fixed_weight_loss_ld(student, reference, teacher, config) -> float:
    """loss_ld of ``student`` on the training images, positives weighted by ``reference``'s scores."""
    records = load_split(config.data, "train")
    batch = next(iter(build_val_loader(records, dataclasses.replace(config.data, val_batch_size=len(records)))))
    criterion = build_criterion(config, with_teacher=True)
    images, targets = batch.inputs("cpu")
    with torch.no_grad():
        reference_scores, _ = reference.eval()(images)
        _, bbox_preds = student.eval()(images)
        _, soft_targets = teacher(images)
        losses = criterion(reference_scores, bbox_preds, targets, batch.image_sizes, soft_targets=soft_targets)
    return losses["loss_ld"].item()


def test_plain_gfl_run_without_a_teacher(tmp_path):
    # The same loop trains teachers and baselines: GFL losses only, no teacher anywhere.
    config = small_config("distill.teacher=null", "data.max_images=4", "train.epochs=1", "train.eval_interval=0")
    result = train(config, work_dir=tmp_path)
    assert result.teacher is None and result.best_checkpoint is None and result.iteration == 2
    losses = {key for key in read_log(tmp_path, "train")[0] if key.startswith("loss")}
    assert losses == {"loss", "loss_cls", "loss_bbox", "loss_dfl"}
    trained = read_checkpoint(result.latest_checkpoint)["model"]
    assert any(not torch.equal(trained[k], v) for k, v in _initial_student(config).state_dict().items())
