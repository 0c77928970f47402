"""DataLoader construction, with mmdet's aspect-ratio batch grouping."""

from __future__ import annotations

from collections.abc import Iterator, Sized
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, Sampler, SequentialSampler

from ldexport.data.collate import BatchCollator
from ldexport.data.dataset import DetectionDataset
from ldexport.data.pipeline import Sample


class AspectRatioBatchSampler(BatchSampler):
    """Batches of images that are all landscape (``w >= h``) or all portrait.

    The ``batch_sampler`` of mmdet 3.3's COCO configs: it cuts the padding of a batch.
    Indices come from ``sampler`` (a ``DistributedSampler`` included); the leftovers of
    both groups are batched together at the end of an epoch.

    Args:
        sampler: yields data set indices.
        dataset: gives each index's original size.
        batch_size: images per batch.
        drop_last: drop the last incomplete batch.
    """

    def __init__(
        self, sampler: Sampler[int], dataset: DetectionDataset, batch_size: int, drop_last: bool = False
    ) -> None:
        super().__init__(sampler, batch_size, drop_last)
        self.dataset = dataset

    def __iter__(self) -> Iterator[list[int]]:
        buckets: list[list[int]] = [[], []]
        for index in self.sampler:
            record = self.dataset.data[index]
            bucket = buckets[0 if record.width < record.height else 1]
            bucket.append(index)
            if len(bucket) == self.batch_size:
                yield bucket[:]
                bucket.clear()
        left = buckets[0] + buckets[1]
        for start in range(0, len(left), self.batch_size):
            batch = left[start : start + self.batch_size]
            if len(batch) == self.batch_size or not self.drop_last:
                yield batch

    def __len__(self) -> int:
        assert isinstance(self.sampler, Sized)
        if self.drop_last:
            return len(self.sampler) // self.batch_size
        return -(-len(self.sampler) // self.batch_size)


def build_loader(
    dataset: DetectionDataset,
    *,
    batch_size: int,
    shuffle: bool = False,
    sampler: Sampler[int] | None = None,
    num_workers: int = 0,
    drop_last: bool = False,
    aspect_ratio_grouping: bool = False,
    pin_memory: bool = False,
    seed: int | None = None,
    collator: BatchCollator | None = None,
) -> DataLoader[Sample]:
    """A DataLoader that yields :class:`~ldexport.data.collate.Batch` objects.

    Args:
        dataset: the data set.
        batch_size: images per batch (per process when distributed).
        shuffle: shuffle every epoch; ignored when ``sampler`` is given (a
            ``DistributedSampler`` shuffles by itself; call its ``set_epoch``).
        sampler: the index sampler, e.g. ``DistributedSampler(dataset)``.
        num_workers: worker processes; workers persist across epochs.
        drop_last: drop the last incomplete batch.
        aspect_ratio_grouping: batch landscape and portrait images apart, as mmdet's
            training loader does.
        pin_memory: pin batches for faster host-to-GPU copies.
        seed: seeds the shuffling and the workers' random flips and scales.
        collator: the padding; to multiples of 32 when ``None``.

    Returns:
        The DataLoader.
    """
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    if sampler is None:
        sampler = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    if aspect_ratio_grouping:
        batch_sampler: BatchSampler = AspectRatioBatchSampler(sampler, dataset, batch_size, drop_last)
    else:
        batch_sampler = BatchSampler(sampler, batch_size, drop_last)
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        collate_fn=collator if collator is not None else BatchCollator(),
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        generator=generator,
    )

