"""The mmdet 3.3 reference: an LD detector built with mmdet and the same detector in ldexport.

mmdet's ``KnowledgeDistillationSingleStageDetector`` is built from the
``ld_r18-gflv1-r101_fpn_1x_coco`` settings, made small for speed on both sides alike
(R18 student and R18 teacher, narrow FPN and head, few classes). Its random weights are
copied into ldexport through the interop loader, so both sides compute on identical
weights and inputs.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import torch

from ldexport.interop.mmdet import from_mmdet_state_dict, load_state_dict_checked
from ldexport.model import GFLDetector, ModelConfig, build_detector

NUM_CLASSES = 4
STUDENT = ModelConfig(
    depth=18, num_classes=NUM_CLASSES, base_channels=16, neck_channels=32, feat_channels=32, stacked_convs=2, norm_groups=8
)
TEACHER = replace(STUDENT, depth=34, feat_channels=64, stacked_convs=3)
TEST_CFG = dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05, nms=dict(type="nms", iou_threshold=0.6), max_per_img=100)


def _mmdet_gfl_parts(cfg: ModelConfig, head_type: str) -> dict:
    from mmengine.config import ConfigDict

    in_channels = [cfg.base_channels * 2**i * (4 if cfg.depth >= 50 else 1) for i in range(4)]
    return dict(
        backbone=dict(
            type="ResNet", depth=cfg.depth, base_channels=cfg.base_channels, num_stages=4, out_indices=(0, 1, 2, 3),
            frozen_stages=cfg.frozen_stages, norm_cfg=dict(type="BN", requires_grad=True), norm_eval=cfg.norm_eval,
            style="pytorch",
        ),
        neck=dict(
            type="FPN", in_channels=in_channels, out_channels=cfg.neck_channels, start_level=1,
            add_extra_convs="on_output", num_outs=5,
        ),
        bbox_head=dict(
            type=head_type, num_classes=cfg.num_classes, in_channels=cfg.neck_channels,
            stacked_convs=cfg.stacked_convs, feat_channels=cfg.feat_channels,
            norm_cfg=dict(type="GN", num_groups=cfg.norm_groups, requires_grad=True),
            anchor_generator=dict(type="AnchorGenerator", ratios=[1.0], octave_base_scale=8, scales_per_octave=1, strides=[8, 16, 32, 64, 128]),
            loss_cls=dict(type="QualityFocalLoss", use_sigmoid=True, beta=2.0, loss_weight=1.0),
            loss_dfl=dict(type="DistributionFocalLoss", loss_weight=0.25),
            reg_max=cfg.reg_max,
            loss_bbox=dict(type="GIoULoss", loss_weight=2.0),
        ),
        train_cfg=ConfigDict(assigner=dict(type="ATSSAssigner", topk=9), allowed_border=-1, pos_weight=-1, debug=False),
        test_cfg=ConfigDict(copy.deepcopy(TEST_CFG)),
    )


def build_mmdet_ld(student: ModelConfig = STUDENT, teacher: ModelConfig = TEACHER, seed: int = 0):
    """mmdet's LD detector (student with ``LDHead``, teacher a ``GFL``), randomly initialised."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules()
    torch.manual_seed(seed)
    teacher_model = dict(type="GFL", **_mmdet_gfl_parts(teacher, "GFLHead"))
    student_parts = _mmdet_gfl_parts(student, "LDHead")
    student_parts["bbox_head"]["loss_ld"] = dict(type="KnowledgeDistillationKLDivLoss", loss_weight=0.25, T=10)
    detector = MODELS.build(
        dict(type="KnowledgeDistillationSingleStageDetector", teacher_config=dict(model=teacher_model), teacher_ckpt=None, **student_parts)
    )
    detector.init_weights()
    detector.teacher_model.init_weights()
    _perturb(detector)
    _perturb(detector.teacher_model)
    return detector


def _perturb(model: torch.nn.Module) -> None:
    """Moves every parameter and norm statistic off its initial value.

    Fresh initialisations hide bugs: unit GroupNorm weights, zero biases, Scale = 1 and
    identical BatchNorm statistics make wrong key mappings and skipped terms invisible.
    """
    generator = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point() or name.endswith("integral.project"):
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if name.endswith("running_var"):
                tensor.mul_(1 + 0.2 * noise.abs())
            elif name.endswith(("scale", "gn.weight", "bn1.weight", "bn2.weight", "bn3.weight")):
                # zero-initialised residual norms (mmdet's zero_init_residual) get a value too
                tensor.copy_(torch.where(tensor == 0, 0.5, tensor) * (1 + 0.1 * noise))
            else:
                tensor.add_(0.01 * noise)


def to_ldexport(mmdet_model: torch.nn.Module, cfg: ModelConfig) -> GFLDetector:
    """The same weights in an ldexport detector, through the interop loader."""
    model = build_detector(cfg)
    load_state_dict_checked(model, from_mmdet_state_dict(mmdet_model.state_dict()), "mmdet model")
    return model


def make_batch(sizes: list[tuple[int, int]], boxes: list[list[list[float]]], labels: list[list[int]], seed: int = 0):
    """A padded batch with mmdet data samples and ldexport targets for the same images.

    Args:
        sizes: ``(h, w)`` of every image before padding to a multiple of 32.
        boxes: per image, xyxy boxes in input pixels (may be empty).
        labels: per image, class indices.

    Returns:
        ``(images [N, 3, Hp, Wp], data_samples, targets, image_sizes)``.
    """
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    pad_h = max(-(-h // 32) * 32 for h, _ in sizes)
    pad_w = max(-(-w // 32) * 32 for _, w in sizes)
    generator = torch.Generator().manual_seed(seed)
    images = torch.zeros(len(sizes), 3, pad_h, pad_w)
    samples, targets = [], []
    for index, (h, w) in enumerate(sizes):
        images[index, :, :h, :w] = torch.randn(3, h, w, generator=generator)
        box_tensor = torch.tensor(boxes[index], dtype=torch.float32).reshape(-1, 4)
        label_tensor = torch.tensor(labels[index], dtype=torch.long)
        # mmdet's data preprocessor gives each image its own size rounded up to 32
        own_pad = (-(-h // 32) * 32, -(-w // 32) * 32)
        sample = DetDataSample(
            metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=own_pad, batch_input_shape=(pad_h, pad_w), scale_factor=(1.0, 1.0))
        )
        sample.gt_instances = InstanceData(bboxes=box_tensor, labels=label_tensor)
        sample.ignored_instances = InstanceData(bboxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))
        samples.append(sample)
        targets.append({"boxes": box_tensor, "labels": label_tensor, "ignore_boxes": torch.zeros(0, 4)})
    return images, samples, targets, list(sizes)


def assert_predictions_equal(actual: list, expected: list) -> int:
    """ldexport's ``Detections`` against mmdet's ``predict`` results, image by image: the
    same count and labels, scores within 1e-5, boxes within 1e-3 px. Returns the count."""
    total = 0
    for mine, theirs in zip(actual, expected, strict=True):
        reference = theirs.pred_instances
        assert len(mine.scores) == len(reference.scores)
        assert torch.equal(mine.labels, reference.labels)
        assert torch.allclose(mine.scores, reference.scores, rtol=0, atol=1e-5)
        assert torch.allclose(mine.boxes, reference.bboxes, rtol=0, atol=1e-3)
        total += len(mine.scores)
    return total


def assert_student_grads_equal(student: torch.nn.Module, mmdet_model: torch.nn.Module, rtol: float) -> tuple[int, int]:
    """Every student parameter's gradient against its mmdet twin's (relative norm error
    below ``rtol``); a parameter without gradient must have none in mmdet either.

    Returns:
        ``(checked, nonzero)``: parameters compared, and those with a nonzero gradient.
    """
    reference_params = from_mmdet_state_dict(dict(mmdet_model.named_parameters()))
    checked = nonzero = 0
    for name, parameter in student.named_parameters():
        reference = reference_params[name].grad
        if parameter.grad is None:
            assert reference is None, name
            continue
        error = (parameter.grad - reference).norm() / reference.norm().clamp(min=1e-30)
        assert error.item() < rtol, f"{name}: relative gradient error {error.item():.3g}"
        checked += 1
        nonzero += bool(reference.any())
    return checked, nonzero


# Non-square images, boxes from tiny to image-sized, and an image without any box.
BATCH_SIZES = [(160, 224), (192, 128), (128, 160)]
BATCH_BOXES = [
    [[10.0, 12.0, 30.0, 40.0], [50.0, 20.0, 210.0, 150.0], [100.0, 100.0, 108.0, 106.0]],
    [[5.0, 30.0, 120.0, 190.0], [60.0, 60.0, 90.0, 80.0]],
    [],
]
BATCH_LABELS = [[0, 3, 1], [2, 2], []]
