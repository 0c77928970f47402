"""Data sets and loaders for training and evaluation, from a :class:`DataConfig`.

The training loader shards with ``DistributedSampler`` (also for one process, so the
order of an epoch depends only on the seed and the epoch) and batches through
:class:`ResumableBatchSampler`, which skips the steps a resumed epoch has already
made and seeds each image's flip and scale from the seed, the epoch and the image: the
same images, in the same batches, with the same flips and scales as an uninterrupted
run, whatever the number of loader workers.
"""

from __future__ import annotations

import atexit
import signal
import weakref
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import torch
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, Sampler, SequentialSampler

from ldexport.config import DataConfig
from ldexport.data.coco import load_coco
from ldexport.data.collate import BatchCollator
from ldexport.data.dataset import DetectionDataset, SampleKey, augmentation_seed
from ldexport.data.loader import AspectRatioBatchSampler
from ldexport.data.pipeline import DetectionTransform
from ldexport.data.records import RecordSet, filter_records
from ldexport.data.shapes import ensure_shapes, load_shapes
from ldexport.data.yolo import load_yolo
from ldexport.errors import LdexportError

FORMATS = ("coco", "yolo", "shapes")
# Batches each worker decodes ahead: a step that stalls on a slow image draws on these.
PREFETCH_BATCHES = 4


def load_split(data: DataConfig, split: str) -> RecordSet:
    """The records of ``split`` (``"train"`` or ``"val"``) as the config names them.

    Training records are filtered as mmdet's ``filter_cfg`` does (no boxes, or a side
    under 32 px); validation records are all kept. ``max_images`` keeps the first ones.

    Raises:
        LdexportError: an unknown format, or missing / malformed files.
    """
    if data.format not in FORMATS:
        raise LdexportError(f"data.format must be one of {', '.join(FORMATS)}, got {data.format!r}")
    root = Path(data.root)
    if data.format == "shapes":
        records = load_shapes(root, split)
    else:
        images = root / (data.train_images if split == "train" else data.val_images)
        if data.format == "coco":
            records = load_coco(images, root / (data.train_annotations if split == "train" else data.val_annotations))
        else:
            labels = data.train_labels if split == "train" else data.val_labels
            records = load_yolo(images, root / labels if labels else _yolo_labels_dir(images), root / data.class_names)
    if split == "train":
        records = filter_records(records, min_size=32, drop_empty=True)
    if data.max_images is not None:
        records = records.subset(range(min(data.max_images, len(records))))
    if len(records) == 0:
        raise LdexportError(f"the {split} split of {root} holds no usable images")
    return records


def prepare_shapes(data: DataConfig) -> None:
    """Generates the shapes data set under ``data.root`` unless it is there (rank 0 only)."""
    if data.format == "shapes":
        ensure_shapes(data.root)


def _yolo_labels_dir(images: Path) -> Path:
    parts = list(images.parts)
    if "images" not in parts:
        raise LdexportError(f"{images}: cannot find the YOLO labels folder; set data.train_labels / data.val_labels")
    index = len(parts) - 1 - parts[::-1].index("images")
    parts[index] = "labels"
    return Path(*parts)


class ResumableBatchSampler(Sampler[list[SampleKey]]):
    """Batches of a sharded, seeded epoch, optionally without its first ``skip`` batches.

    Each index comes as a :class:`~ldexport.data.dataset.SampleKey` with the seed of its
    augmentation (:func:`~ldexport.data.dataset.augmentation_seed` of the sampler's seed,
    the epoch and the index).

    Args:
        sampler: the ``DistributedSampler`` (its epoch sets the order).
        batch_sampler: the batches built from ``sampler``'s indices.
    """

    def __init__(self, sampler: DistributedSampler, batch_sampler: BatchSampler) -> None:
        self.sampler = sampler
        self.batch_sampler = batch_sampler
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Selects the epoch's order and how many of its batches are already done."""
        self.sampler.set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[list[SampleKey]]:
        seed, epoch = self.sampler.seed, self.sampler.epoch
        for batch in islice(iter(self.batch_sampler), self.skip, None):
            yield [SampleKey(index, augmentation_seed(seed, epoch, index)) for index in batch]

    def __len__(self) -> int:
        return len(self.batch_sampler) - self.skip

    @property
    def batches_per_epoch(self) -> int:
        """Optimizer steps of a whole epoch."""
        return len(self.batch_sampler)


def build_train_loader(
    records: RecordSet, data: DataConfig, *, rank: int, world_size: int, seed: int, pin_memory: bool,
    min_boxes: int = 4,
) -> tuple[DataLoader, ResumableBatchSampler]:
    """The training loader (mmdet's train pipeline) and its resumable batch sampler; its
    batches carry their ground truth padded to at least ``min_boxes`` boxes."""
    short = data.scale_range
    transform = DetectionTransform(
        scale=data.scale,
        scale_range=((data.scale[0], short[0]), (data.scale[0], short[1])) if short else None,
        flip_prob=data.flip_prob,
    )
    dataset = DetectionDataset(records, transform)
    sampler: DistributedSampler = DistributedSampler(
        dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed
    )
    if data.aspect_ratio_grouping:
        batches: BatchSampler = AspectRatioBatchSampler(sampler, dataset, data.batch_size)
    else:
        batches = BatchSampler(sampler, data.batch_size, drop_last=False)
    batch_sampler = ResumableBatchSampler(sampler, batches)
    loader = _ended_at_exit(DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=data.workers,
        collate_fn=BatchCollator(min_boxes=min_boxes),
        pin_memory=pin_memory,
        persistent_workers=data.workers > 0,
        prefetch_factor=PREFETCH_BATCHES if data.workers > 0 else None,
        worker_init_fn=_ignore_stop_signals,
        # Its own generator: making an iterator must not draw from the global RNG.
        generator=torch.Generator().manual_seed(seed + rank),
    ))
    return loader, batch_sampler


def _ended_at_exit(loader: DataLoader) -> DataLoader:
    """Ends ``loader``'s persistent workers when the interpreter exits, before
    multiprocessing's own exit handler would.

    At exit torch's DataLoader no longer ends its workers itself: it leaves that to
    multiprocessing, which sends them SIGTERM and waits for them. Ours ignore SIGTERM
    (:func:`_ignore_stop_signals`), so a process that exits while a loader's workers are
    alive (a script that keeps its loader to the end) would wait forever. This handler,
    registered after torch's, runs before it and ends them the normal way (the DataLoader
    tells them to stop and joins them). It holds the loader weakly.
    """
    reference = weakref.ref(loader)

    def end_workers() -> None:
        live = reference()
        iterator = getattr(live, "_iterator", None)  # the persistent workers' iterator, once started
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()

    atexit.register(end_workers)
    return loader


def _ignore_stop_signals(worker_id: int) -> None:
    """Leaves SIGINT / SIGTERM to the main process, which stops after its step.

    Ctrl-C, ``scancel`` or ``kill -- -PGID`` signal the workers too; a worker that died
    of it would make the main process fail before it could write its checkpoint.
    Workers still end with the main process (the DataLoader tells them to, and they
    exit when their parent is gone).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def build_val_loader(records: RecordSet, data: DataConfig, *, pin_memory: bool = False) -> DataLoader:
    """The evaluation loader: test pipeline (resize, no flip), in record order.

    Its workers persist between evaluations, and its uint8 batches are pinned for
    non-blocking copies when ``pin_memory`` (on CUDA).
    """
    dataset = DetectionDataset(records, DetectionTransform(scale=data.scale))
    return _ended_at_exit(DataLoader(
        dataset,
        batch_sampler=BatchSampler(SequentialSampler(dataset), data.val_batch_size, drop_last=False),
        num_workers=data.workers,
        collate_fn=BatchCollator(),
        pin_memory=pin_memory,
        persistent_workers=data.workers > 0,
        prefetch_factor=PREFETCH_BATCHES if data.workers > 0 else None,
        worker_init_fn=_ignore_stop_signals,
    ))
