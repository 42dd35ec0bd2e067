"""Synthetic masks shared by the shape and segmentation tests (deterministic)."""

from __future__ import annotations

import numpy as np
import pytest


def make_shapes() -> dict[str, np.ndarray]:
    g = np.mgrid[:22, :20, :18].astype(np.float64)
    sphere = ((g[0] - 10.5) ** 2 + (g[1] - 9.5) ** 2 + (g[2] - 8.5) ** 2) < 7.0**2
    ellipsoid = ((g[0] - 10.2) / 9.0) ** 2 + ((g[1] - 9.6) / 6.0) ** 2 + ((g[2] - 8.3) / 4.0) ** 2 < 1
    box = np.zeros((22, 20, 18), bool)
    box[3:17, 4:12, 5:15] = True
    lshape = np.zeros((22, 20, 18), bool)
    lshape[3:18, 3:8, 3:15] = True
    lshape[3:8, 3:17, 3:15] = True
    rng = np.random.default_rng(7)
    spiky = sphere.copy()
    spiky &= rng.random(sphere.shape) < 0.8  # irregular, ambiguous marching-cubes cells
    crescent = sphere & ~(((g[0] - 14.0) ** 2 + (g[1] - 9.5) ** 2 + (g[2] - 8.5) ** 2) < 6.0**2)
    return {
        "sphere": sphere,
        "ellipsoid": ellipsoid,
        "box": box,
        "lshape": lshape,
        "spiky": spiky,
        "crescent": crescent,
    }


SPACINGS = {"iso": (1.0, 1.0, 1.0), "aniso": (0.7, 1.3, 2.5)}


@pytest.fixture(scope="session")
def shapes() -> dict[str, np.ndarray]:
    return make_shapes()
