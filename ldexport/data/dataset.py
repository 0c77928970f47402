"""The torch ``Dataset`` over a record set."""

from __future__ import annotations

from torch.utils.data import Dataset

from ldexport.data.pipeline import DetectionTransform, Sample
from ldexport.data.records import RecordSet


class DetectionDataset(Dataset[Sample]):
    """Map-style data set: index -> transformed :class:`Sample`.

    Works with any sampler, ``torch.utils.data.DistributedSampler`` included, and with
    worker processes (the random flip and scale use the global torch generator, which
    the DataLoader seeds per worker).

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

    def __getitem__(self, index: int) -> Sample:
        return self.transform(self.data[index])
