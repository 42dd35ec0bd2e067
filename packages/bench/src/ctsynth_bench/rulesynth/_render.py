"""HU rendering of a lesion from the image attributes of a report.

The lesion image inside the mask is ``L + T + F + n``:

- ``L``: the density level. Relative densities (hypo / iso / hyper / mixed) are the organ's
  reference HU plus an offset drawn from ``_rules.DELTA_SAMPLING``; enhanced CT adds
  ``ENHANCEMENT_SHIFT_HU`` to solid hypo/hyper lesions. Absolute densities (fluid 0-20 HU, stone
  300-900 HU, lung soft tissue 20-50 HU, ground glass -650..-350 HU) ignore the organ.
- ``T``: texture. Homogeneous: none. Heterogeneous: a smooth Gaussian random field (correlation
  ~1 voxel) rescaled to 2-4x (mixed: 3-5x) the template's noise std inside the lesion.
- ``F``: specific features. Calcified foci: 1-3 small foci 150-400 HU above the level;
  low-density foci: 1-3 foci 40-80 HU below it.
- ``n``: white Gaussian noise with the template's measured noise std.

It is blended into the CT with ``alpha``: the mask itself for a well-defined margin (a step edge),
or, for an ill-defined margin, 1 in the mask and a halo ``exp(-d^2 / 2 s^2)`` outside it (``d`` the
distance to the mask in voxels, ``s`` 1.0-1.6 voxels) fading into the organ.

The organ's reference HU is its median HU; hollow organs (whose label includes lumen gas, fluid and
faeces) use a soft-tissue wall reference of 40 HU.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage

from ._rules import ABSOLUTE_SAMPLING, DELTA_SAMPLING, ENHANCEMENT_SHIFT_HU, HOLLOW, LesionSpec

WALL_REFERENCE_HU = 40.0


@lru_cache(maxsize=4)
def _highpass_gain(sigma: float) -> float:
    """Std of ``w - G_sigma * w`` for unit white noise ``w`` (exact, from the filter's impulse response)."""
    n = int(8 * sigma) * 2 + 1
    delta = np.zeros((n, n, n))
    delta[n // 2, n // 2, n // 2] = 1.0
    h = delta - ndimage.gaussian_filter(delta, sigma, mode="constant")
    return float(np.sqrt((h**2).sum()))


def estimate_noise(ct: np.ndarray, region: np.ndarray) -> float:
    """Robust CT noise std (HU) in ``region``: MAD of a high-pass residual, calibrated for white noise.

    Args:
        ct: float (X, Y, Z) HU.
        region: bool (X, Y, Z); eroded by one voxel before measuring (edges are not noise).

    Returns:
        Noise standard deviation in HU (>= 1).
    """
    if not region.any():
        return 10.0
    idx = np.argwhere(region)
    lo = np.maximum(idx.min(0) - 3, 0)
    hi = np.minimum(idx.max(0) + 4, ct.shape)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    sub = ct[sl].astype(np.float64)
    inner = ndimage.binary_erosion(region[sl], iterations=1)
    if inner.sum() < 20:
        inner = region[sl]
    resid = (sub - ndimage.gaussian_filter(sub, 1.0))[inner]
    mad = np.median(np.abs(resid - np.median(resid))) * 1.4826
    return float(max(mad / _highpass_gain(1.0), 1.0))


def reference_hu(ct: np.ndarray, organ: np.ndarray, organ_name: str) -> float:
    """The organ HU that relative densities refer to: the median (hollow organs: 40 HU wall)."""
    if organ_name in HOLLOW or not organ.any():
        return WALL_REFERENCE_HU
    return float(np.median(ct[organ]))


def _smooth_field(shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.normal(size=shape), sigma)
    return field


def _foci(mask: np.ndarray, rng: np.random.Generator, *, radius_vox: float, count: int) -> np.ndarray:
    """Up to ``count`` small balls centred on random lesion voxels (clipped to the mask)."""
    pts = np.argwhere(mask)
    out = np.zeros(mask.shape, dtype=bool)
    grids = np.indices(mask.shape)
    for p in pts[rng.choice(len(pts), size=min(count, len(pts)), replace=False)]:
        d2 = sum((grids[i] - p[i]) ** 2 for i in range(3))
        out |= d2 <= radius_vox**2
    return out & mask


def render_lesion(
    ct: np.ndarray,
    lesion: np.ndarray,
    spec: LesionSpec,
    *,
    organ_hu: float,
    noise_std: float,
    rng: np.random.Generator,
) -> dict[str, float]:
    """Render the lesion into ``ct`` in place and return the drawn parameters.

    Args:
        ct: float32 (X, Y, Z) HU, modified in place (only around the lesion).
        lesion: bool (X, Y, Z) mask, non-empty.
        spec: canonical report categories.
        organ_hu: the organ's reference HU (:func:`reference_hu`).
        noise_std: the template's noise std in HU (:func:`estimate_noise`).
        rng: random generator.

    Returns:
        ``{"level_hu", "texture_std", "blur_vox", "organ_hu", "noise_std"}``.
    """
    idx = np.argwhere(lesion)
    pad = 6
    lo = np.maximum(idx.min(0) - pad, 0)
    hi = np.minimum(idx.max(0) + pad + 1, ct.shape)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    m = lesion[sl]
    if spec.density in ABSOLUTE_SAMPLING:
        level = float(rng.uniform(*ABSOLUTE_SAMPLING[spec.density]))
    else:
        level = organ_hu + float(rng.uniform(*DELTA_SAMPLING[spec.density]))
        if spec.enhancement == "enhanced" and spec.density in ("hypo", "hyper"):
            level += ENHANCEMENT_SHIFT_HU
    img = np.full(m.shape, level, dtype=np.float64)
    texture_std = 0.0
    if spec.variation == "heterogeneous" and spec.density not in ("stone",):
        k = rng.uniform(3.0, 5.0) if spec.density == "mixed" else rng.uniform(2.0, 4.0)
        texture_std = float(k * noise_std)
        field = _smooth_field(m.shape, 1.0, rng)
        deep = m & (ndimage.distance_transform_edt(m) >= 2)
        vals = field[deep] if deep.sum() >= 4 else field[m]
        field = (field - vals.mean()) / (vals.std() + 1e-8) if vals.size > 1 else field * 0
        img += texture_std * field
    r_vox = max(1.0, 0.25 * float(np.cbrt(m.sum())))
    if "calcified_foci" in spec.features and spec.density not in ("stone", "fluid"):
        foci = _foci(m, rng, radius_vox=min(r_vox, 1.5), count=int(rng.integers(1, 4)))
        img[foci] = level + rng.uniform(150.0, 400.0)
    if "low_density_foci" in spec.features and spec.density not in ("stone", "fluid"):
        foci = _foci(m, rng, radius_vox=r_vox, count=int(rng.integers(1, 4)))
        img[foci] -= rng.uniform(40.0, 80.0)
    img += rng.normal(0.0, noise_std, size=m.shape)
    blur = 0.0
    alpha = m.astype(np.float64)
    if spec.margin == "ill_defined" and spec.density != "stone":
        blur = float(rng.uniform(1.0, 1.6))
        # The labelled voxels stay lesion; outside them a Gaussian halo of the distance (voxels)
        # fades out, the same for a small or a large lesion.
        dist = ndimage.distance_transform_edt(~m)
        alpha = np.where(m, 1.0, np.exp(-(dist**2) / (2.0 * blur**2)))
    sub = ct[sl].astype(np.float64)
    ct[sl] = (sub * (1.0 - alpha) + img * alpha).astype(ct.dtype)
    return {"level_hu": level, "texture_std": texture_std, "blur_vox": blur,
            "organ_hu": organ_hu, "noise_std": noise_std}
