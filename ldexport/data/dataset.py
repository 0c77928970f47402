"""The torch ``Dataset`` over a record set, and the keys that seed its random augmentation."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from ldexport.data.pipeline import DetectionTransform, Sample
from ldexport.data.records import RecordSet


class SampleKey(NamedTuple):
    """A data set index with the seed of its random flip and scale.

    The training sampler hands these to the data set, so that an image's augmentation
    depends only on the run's seed, the epoch and the index: not on which worker process
    draws it, how many there are, or where a resumed run restarted them.
    """

    item: int  # the data set index
    seed: int


def augmentation_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of image ``index``'s augmentation in ``epoch`` of a run seeded ``seed``
    (a hash of the three: neighbouring keys give unrelated streams)."""
    state = np.random.SeedSequence([seed % 2**64, epoch, index]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


class DetectionDataset(Dataset[Sample]):
    """Map-style data set: index (or :class:`SampleKey`) -> transformed :class:`Sample`.

    Works with any sampler, ``torch.utils.data.DistributedSampler`` included, and with
    worker processes. A plain index draws the random flip and scale from the global
    torch generator (which the DataLoader seeds per worker); a :class:`SampleKey` draws
    them from a generator seeded with its seed.

    Args:
        data: the records and their classes.
        transform: the per-image pipeline; the test pipeline (resize to fit
            ``(1333, 800)``, no flip) when ``None``.
    """

    def __init__(self, data: RecordSet, transform: DetectionTransform | None = None) -> None:
        self.data = data
        self.transform = transform if transform is not None else DetectionTransform()

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key: int | SampleKey) -> Sample:
        if isinstance(key, SampleKey):
            return self.transform(self.data[key.item], generator=torch.Generator().manual_seed(key.seed))
        return self.transform(self.data[key])
