"""A pinned uint8 batch normalised on CUDA equals the CPU input (marked ``cuda``)."""

import pytest
import torch

from ldexport.data.collate import BatchCollator
from ldexport.data.pipeline import ImageMeta, Sample

pytestmark = pytest.mark.cuda


def test_pinned_batch_normalised_on_cuda_equals_cpu():
    generator = torch.Generator().manual_seed(0)
    samples = [
        Sample(torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator), torch.zeros(0, 4),
               torch.zeros(0, dtype=torch.int64), torch.zeros(0, 4), ImageMeta(i, "x.png", (h, w), (h, w), (1.0, 1.0)))
        for i, (h, w) in enumerate([(70, 100), (33, 129)])
    ]
    batch = BatchCollator()(samples).pin_memory()
    assert batch.images.is_pinned() and batch.images.dtype == torch.uint8
    on_cuda, targets = batch.inputs("cuda", channels_last=True)
    on_cpu, _ = batch.inputs("cpu")
    assert on_cuda.is_cuda and targets[0]["boxes"].is_cuda
    assert torch.equal(on_cuda.cpu(), on_cpu)  # IEEE subtraction and division: the same bits
