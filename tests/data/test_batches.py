"""Dataset, collate, samplers and workers produce the batch format of INTERNALS.md."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DistributedSampler

from ldexport.data.collate import Batch, BatchCollator
from ldexport.data.dataset import DetectionDataset
from ldexport.data.inference import prepare_images
from ldexport.data.loader import AspectRatioBatchSampler, build_loader
from ldexport.data.pipeline import DetectionTransform, ImageMeta, Sample, boxes_to_original
from ldexport.data.shapes import load_shapes
from ldexport.data.transforms import normalize
from ldexport.errors import LdexportError


def _sample(height: int, width: int, value: int, num_boxes: int) -> Sample:
    image = torch.full((3, height, width), value, dtype=torch.uint8)
    boxes = torch.tensor([[1.0, 2.0, 5.0, 6.0]]).repeat(num_boxes, 1)
    meta = ImageMeta(value, "x.png", (height * 2, width * 2), (height, width), (0.5, 0.5))
    return Sample(image, boxes, torch.zeros(num_boxes, dtype=torch.int64), torch.zeros(0, 4), meta)


def test_collate_pads_the_batch_to_multiples_of_32() -> None:
    samples = [_sample(70, 100, 10, 2), _sample(33, 129, 200, 0)]
    batch = BatchCollator()(samples)
    assert batch.images.shape == (2, 3, 96, 160) and batch.images.dtype == torch.uint8
    assert batch.image_sizes == [(70, 100), (33, 129)]
    assert torch.equal(batch.images[0, :, :70, :100], samples[0].image)
    assert int(batch.images[0, :, 70:].sum()) == 0 and int(batch.images[0, :, :, 100:].sum()) == 0
    # The network input, normalised on the device: mmdet's normalise-then-pad-with-0.
    images, targets = batch.inputs("cpu")
    assert images.shape == (2, 3, 96, 160) and images.dtype == torch.float32
    assert torch.equal(images[0, :, :70, :100], normalize(samples[0].image))
    assert torch.equal(images[1, :, :33, :129], normalize(samples[1].image))
    assert images[0, :, 70:].abs().sum() == 0 and images[0, :, :, 100:].abs().sum() == 0
    assert images[1, :, 33:].abs().sum() == 0 and images[1, :, :, 129:].abs().sum() == 0
    last, _ = batch.inputs("cpu", channels_last=True)
    assert last.is_contiguous(memory_format=torch.channels_last) and torch.equal(last, images)
    assert targets[0]["boxes"].shape == (2, 4)
    assert [sorted(t) for t in batch.targets] == [["boxes", "ignore_boxes", "labels"]] * 2
    assert batch.targets[0]["boxes"].shape == (2, 4) and batch.targets[1]["boxes"].shape == (0, 4)
    assert batch.targets[1]["labels"].dtype == torch.int64 and batch.targets[1]["ignore_boxes"].shape == (0, 4)
    assert [m.image_id for m in batch.metas] == [10, 200] and len(batch) == 2
    moved = batch.to("cpu")
    assert isinstance(moved, Batch) and torch.equal(moved.images, batch.images)


def test_loader_batches_targets_in_resized_pixels(tiny_shapes: Path) -> None:
    data = load_shapes(tiny_shapes, "train")
    dataset = DetectionDataset(data, DetectionTransform(scale=(96, 64)))
    batches = list(build_loader(dataset, batch_size=3))
    assert [len(b) for b in batches] == [3, 3, 2]
    by_id = {r.image_id: r for r in data}
    for batch in batches:
        assert batch.images.shape[-2] % 32 == 0 and batch.images.shape[-1] % 32 == 0
        for target, size, meta in zip(batch.targets, batch.image_sizes, batch.metas):
            record = by_id[meta.image_id]
            assert size == meta.image_size and max(size) <= 96 and min(size) <= 64
            assert meta.original_size == record.size
            torch.testing.assert_close(boxes_to_original(target["boxes"], meta), record.boxes, atol=1e-4, rtol=0)
            assert torch.equal(target["labels"], record.labels)


def test_distributed_sampler_splits_the_data_set(tiny_shapes: Path) -> None:
    dataset = DetectionDataset(load_shapes(tiny_shapes, "train"), DetectionTransform(scale=(64, 64)))
    seen: list[list[int]] = []
    for rank in range(2):
        sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=1)
        sampler.set_epoch(3)
        loader = build_loader(dataset, batch_size=2, sampler=sampler, aspect_ratio_grouping=True)
        seen.append([m.image_id for batch in loader for m in batch.metas])
    assert len(seen[0]) == len(seen[1]) == 4
    assert sorted(seen[0] + seen[1]) == sorted(r.image_id for r in dataset.data)


def test_aspect_ratio_batches_are_all_portrait_or_all_landscape(tiny_shapes: Path) -> None:
    dataset = DetectionDataset(load_shapes(tiny_shapes, "train"))
    records = dataset.data.records
    sampler = AspectRatioBatchSampler(torch.utils.data.SequentialSampler(dataset), dataset, 2)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(len(records)))
    assert len(sampler) == len(batches)
    full = [b for b in batches if len(b) == 2]
    portrait = [r.width < r.height for r in records]
    # All but the leftovers (at most one per orientation, batched together at the end)
    assert len(full) >= len(records) // 2 - 1
    for b in batches[: len(batches) - 1]:
        assert len({portrait[i] for i in b}) == 1


def test_workers_give_the_same_batches_and_seeded_flips(tiny_shapes: Path) -> None:
    data = load_shapes(tiny_shapes, "val")
    plain = DetectionDataset(data, DetectionTransform(scale=(64, 64)))
    serial = list(build_loader(plain, batch_size=2))
    parallel = list(build_loader(plain, batch_size=2, num_workers=1))
    for a, b in zip(serial, parallel, strict=True):
        assert torch.equal(a.images, b.images) and a.image_sizes == b.image_sizes

    flipping = DetectionDataset(data, DetectionTransform(scale=(64, 64), flip_prob=0.5))
    runs = [
        [m.flipped for b in build_loader(flipping, batch_size=1, num_workers=1, seed=7) for m in b.metas]
        for _ in range(2)
    ]
    assert runs[0] == runs[1]
    assert any(runs[0]) and not all(runs[0])  # seed 7 flips some images, not all


def test_training_flips_and_scales_depend_on_the_epoch_and_image_not_the_workers(tiny_shapes: Path) -> None:
    """A resumed epoch restarts the loader's workers from their first seed; its images
    must still be flipped and scaled as in the uninterrupted epoch. Before the keys,
    with workers, the second epoch of a resumed run saw other flips."""
    from ldexport.config import DataConfig
    from ldexport.engine.data import build_train_loader

    records = load_shapes(tiny_shapes, "train")

    def epoch(workers: int, index: int, skip: int = 0) -> dict[int, tuple[bool, tuple[int, int]]]:
        data = DataConfig(
            format="shapes", root=str(tiny_shapes), scale=(112, 48), scale_range=(32, 64), flip_prob=0.5,
            batch_size=2, workers=workers,
        )
        loader, batches = build_train_loader(records, data, rank=0, world_size=1, seed=3, pin_memory=False)
        batches.set_epoch(index, skip=skip)
        seen = {m.image_id: (m.flipped, m.image_size) for batch in loader for m in batch.metas}
        del loader  # its persistent workers end here
        return seen

    whole = epoch(0, 1)
    assert len(whole) == len(records)
    assert {flipped for flipped, _ in whole.values()} == {True, False}
    assert len({size for _, size in whole.values()}) > 2  # multi-scale: sizes vary
    assert epoch(2, 1) == whole
    resumed = epoch(2, 1, skip=2)  # the epoch's last two batches, from fresh workers
    assert len(resumed) == 4 and all(whole[image] == drawn for image, drawn in resumed.items())
    assert epoch(0, 2) != whole  # each epoch draws anew


def test_prepare_images_uses_the_test_pipeline(tiny_shapes: Path) -> None:
    records = load_shapes(tiny_shapes, "val").records[:2]
    batch = prepare_images([r.path for r in records], scale=(128, 96))
    assert batch.images.shape[0] == 2 and batch.images.shape[-1] % 32 == 0
    for meta, record in zip(batch.metas, records):
        assert meta.original_size == record.size and not meta.flipped
        expected_w = int(record.width * min(128 / max(record.size), 96 / min(record.size)) + 0.5)
        assert meta.image_size[1] == expected_w


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"flip_prob": 1.5}, r"flip probability must be in \[0, 1\], got 1.5"),
        ({"flip_prob": -0.1}, r"flip probability must be in \[0, 1\], got -0.1"),
        ({"scale": (0, 800)}, r"resize scales must be positive, got \(0, 800\)"),
        ({"scale_range": ((1333, 640), (1333, -1))}, r"resize scales must be positive"),
    ],
)
def test_transform_rejects_bad_settings(bad: dict, message: str) -> None:
    with pytest.raises(LdexportError, match=message):
        DetectionTransform(**bad)


def test_training_batches_carry_their_ground_truth_padded_in_the_workers(tiny_shapes: Path) -> None:
    from dataclasses import fields

    from ldexport.assign.ground_truth import GroundTruth, pad_ground_truth
    from ldexport.engine.loop import _to_device

    from ldexport.config import DataConfig
    from ldexport.engine.data import build_train_loader

    # the loader `ldexport train` builds, with a worker
    data = DataConfig(format="shapes", root=str(tiny_shapes), scale=(96, 64), batch_size=3, workers=1)
    loader, _ = build_train_loader(
        load_shapes(tiny_shapes, "train"), data, rank=0, world_size=1, seed=0, pin_memory=False, min_boxes=16
    )
    batches = list(loader)
    del loader  # its persistent worker ends here, not with a failing assertion's traceback
    assert len(batches) > 1 and all(b.ground_truth is not None for b in batches)
    for batch in batches:
        expected = pad_ground_truth(batch.targets, batch.image_sizes, minimum=16)
        for field in fields(GroundTruth):
            assert torch.equal(getattr(batch.ground_truth, field.name), getattr(expected, field.name)), field.name
        assert batch.ground_truth.boxes.shape[1] == 16  # at least min_boxes, a power of two
        # mmdet's pad_shape: each image's own size rounded up to 32, not the batch's
        rounded_up = [[-(-h // 32) * 32, -(-w // 32) * 32] for h, w in batch.image_sizes]
        assert batch.ground_truth.pad_shapes.tolist() == rounded_up
        # the training loop copies what the workers padded
        _, truth = _to_device(batch, torch.device("cpu"), channels_last=False, min_boxes=4)
        assert truth.boxes.shape[1] == 16 and torch.equal(truth.boxes, batch.ground_truth.boxes)
    dataset = DetectionDataset(load_shapes(tiny_shapes, "val"), DetectionTransform(scale=(96, 64)))
    assert BatchCollator()([dataset[0]]).ground_truth is None  # evaluation batches need none


def test_a_script_that_keeps_its_loaders_exits(tiny_shapes: Path) -> None:
    """The workers ignore SIGTERM (Ctrl-C and ``kill -- -PGID`` are the main process's to
    handle); torch leaves ending a loader's workers at exit to multiprocessing, which
    sends SIGTERM and waits. A process that exits with its loaders alive (one stopped
    mid-epoch, one done) must still end: before the fix it waited forever."""
    import subprocess
    import sys

    script = f"""
from ldexport.config import DataConfig
from ldexport.data.shapes import load_shapes
from ldexport.engine.data import build_train_loader, build_val_loader
data = DataConfig(format="shapes", root={str(tiny_shapes)!r}, scale=(96, 64), batch_size=2, workers=2)
train, _ = build_train_loader(load_shapes(data.root, "train"), data, rank=0, world_size=1, seed=0, pin_memory=False)
next(iter(train))  # stopped mid-epoch, prefetched batches in flight
val = build_val_loader(load_shapes(data.root, "val"), data)
print(sum(len(batch.metas) for batch in val))
"""
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail("the process did not exit: its loader workers kept it waiting")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["4"]
