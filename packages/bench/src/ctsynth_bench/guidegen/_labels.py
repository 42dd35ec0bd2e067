"""GuideGen's label space (ids 0-20, tumour 20), from the one table in ``ctsynth_bench.data``."""

from __future__ import annotations

import numpy as np

from ..data import GUIDEGEN_CLASSES as _CLASSES
from ..data import GUIDEGEN_TUMOUR, to_guidegen

__all__ = ["GUIDEGEN_CLASSES", "NUM_CLASSES", "TUMOUR", "class_id", "map_organs"]

#: GuideGen class names, index = class id.
GUIDEGEN_CLASSES: tuple[str, ...] = tuple(_CLASSES[i] for i in range(len(_CLASSES)))
NUM_CLASSES = len(GUIDEGEN_CLASSES)
TUMOUR = int(GUIDEGEN_TUMOUR)


def class_id(name: str) -> int:
    """GuideGen class id of a class name (``"tumour"`` -> 20)."""
    return GUIDEGEN_CLASSES.index(name)


def map_organs(organs: np.ndarray, lesion: np.ndarray | None = None) -> np.ndarray:
    """TotalSegmentator v2 ids (+ optional lesion mask) -> uint8 GuideGen ids."""
    return np.asarray(to_guidegen(organs, lesion)).astype(np.uint8)
