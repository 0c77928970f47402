"""The one device parser, as training and the runtime commands meet it."""

import pytest
import torch

from ldexport.devices import torch_device
from ldexport.engine.distributed import init_distributed
from ldexport.errors import LdexportError


def test_device_settings():
    assert torch_device("cpu") == torch.device("cpu")
    assert torch_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("tpu", "cuda:", "cuda:x", "cpu:0", "CUDA"):
        with pytest.raises(LdexportError, match="is not one of auto, cuda, cpu, cuda:N"):
            torch_device(bad)
    with pytest.raises(LdexportError, match="numbered from 0" if torch.cuda.is_available() else "no CUDA GPU"):
        torch_device(f"cuda:{torch.cuda.device_count()}")


def test_training_reads_the_device_through_the_same_parser():
    assert init_distributed("cpu").device == torch.device("cpu")
    with pytest.raises(LdexportError, match="is not one of"):
        init_distributed("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(LdexportError, match="device cuda: no CUDA GPU is available to torch"):
            init_distributed("cuda")
