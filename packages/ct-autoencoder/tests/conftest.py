from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

DATA = Path(__file__).parent / "data" / "abdomen_crop48.npz"


@pytest.fixture(scope="session")
def abdomen() -> dict[str, np.ndarray]:
    """48^3 real abdominal CT crop (int16 HU) and TotalSegmentator labels (uint8); see data/README.md."""
    with np.load(DATA) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)
