"""The inputs parity runs on: photographs fed as deployment feeds them, random images at
other sizes, and batches of more than one.

Every input is made by the graph's own input contract (:meth:`InputSpec.to_feed
<ldexport.data.input_spec.InputSpec.to_feed>`, read from its metadata): a dynamic graph's
photographs are resized by training's keep-ratio rule and padded to a multiple of 32; a
static graph's are letterboxed into its fixed size and batch. Random images keep their
size (:meth:`InputSpec.random_feed <ldexport.data.input_spec.InputSpec.random_feed>`; a
static graph takes its own size only).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ldexport.data.input_spec import INPUT_NAME, InputSpec
from ldexport.export.options import check_image_size

DEFAULT_RANDOM_SIZES = ((192, 256), (320, 480), (448, 352))
"""``(H, W)`` of the random inputs ``ldexport parity`` runs on a dynamic graph unless told."""


@dataclass
class Case:
    """One parity input.

    Attributes:
        name: what it is (file names, or ``random``).
        images: the graph's ``images`` feed.
    """

    name: str
    images: np.ndarray

    @property
    def feeds(self) -> dict[str, np.ndarray]:
        """The feed dict of the graph."""
        return {INPUT_NAME: self.images}


def image_cases(paths: Sequence[Path], spec: InputSpec, batch: int = 1) -> list[Case]:
    """Photographs as graph inputs, ``batch`` images a case (a static graph: its own batch,
    the last case filled up by repeating its last image)."""
    if spec.fixed_batch is not None:
        batch = spec.fixed_batch
    cases = []
    for start in range(0, len(paths), batch):
        group = list(paths[start : start + batch])
        names = ",".join(dict.fromkeys(path.name for path in group))
        cases.append(Case(names, spec.read(group).images))
    return cases


def random_cases(sizes: Sequence[tuple[int, int]], spec: InputSpec, batch: int = 2, seed: int = 0) -> list[Case]:
    """Random images (uniform bytes) at each size, ``batch`` a case (a static graph: its
    own batch), not resized.

    Raises:
        LdexportError: a size no graph takes, or another than a static graph's own.
    """
    generator = torch.Generator().manual_seed(seed)
    batch = spec.fixed_batch or batch
    cases = []
    for height, width in sizes:
        check_image_size(height, width, "parity size")
        cases.append(Case(f"random {batch}x{height}x{width}", spec.random_feed(height, width, batch, generator).images))
    return cases
