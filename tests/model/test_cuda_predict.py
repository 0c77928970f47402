"""``predict`` on CUDA finds what it finds on CPU (marked ``cuda``: skipped without one)."""

import pytest
import torch
from torch import nn

from ldexport.model import ModelConfig, TestConfig, build_detector
from ldexport.parity.detections import match_detections

pytestmark = pytest.mark.cuda
TINY = ModelConfig(depth=18, num_classes=3, base_channels=16, neck_channels=32, feat_channels=32, stacked_convs=2, norm_groups=8)


def test_predict_on_cuda_matches_cpu():
    torch.manual_seed(0)
    model = build_detector(TINY).eval()
    nn.init.constant_(model.head.gfl_cls.bias, -1.0)  # many candidates: NMS has work
    images = torch.randn(3, 3, 128, 160)
    sizes = [(100, 60), (128, 160), (90, 150)]
    cfg = TestConfig(score_thr=0.2, max_per_img=50)
    torch.backends.cudnn.allow_tf32 = False  # compare the post-processing, not TF32 rounding
    try:
        on_cpu = model.predict(images, sizes, cfg)
        on_cuda = model.cuda().predict(images.cuda(), sizes, cfg)
    finally:
        torch.backends.cudnn.allow_tf32 = True
    assert all(found.boxes.is_cuda for found in on_cuda)
    match = match_detections(on_cpu, [type(f)(f.boxes.cpu(), f.scores.cpu(), f.labels.cpu()) for f in on_cuda])
    assert match.reference > 30 and match.passed, match


def test_decoding_on_cuda_waits_for_the_device_twice():
    """``decode_detections`` synchronises twice with no candidate: the read of the candidate
    count that sizes NMS and the read of the kept counts. (The images' size limits were a
    third: a blocking copy to the GPU.) CUDA's sync debug mode warns at each."""
    import warnings

    from ldexport.model.detector import decode_detections

    torch.manual_seed(0)
    model = build_detector(TINY).eval().cuda()  # the prior bias: no score above score_thr
    images = torch.randn(2, 3, 128, 160, device="cuda")
    sizes, cfg = [(100, 60), (128, 160)], TestConfig()
    with torch.no_grad():
        cls_scores, bbox_preds = model(images)
    decode_detections(model.head, cls_scores, bbox_preds, sizes, cfg)  # warm-up: the anchor grid
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            found = decode_detections(model.head, cls_scores, bbox_preds, sizes, cfg)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    waits = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
    assert [len(f.scores) for f in found] == [0, 0]
    assert len(waits) == 2, waits
