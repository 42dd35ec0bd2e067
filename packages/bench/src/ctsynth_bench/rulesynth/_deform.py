"""Variety of anatomy: smooth random deformations, intensity jitter and anatomically allowed flips.

A deformation warps the CT (linear interpolation) and the organ map (nearest neighbour) with the
same displacement field, so organ labels stay aligned with the anatomy; the lesion is placed
afterwards in the deformed organ map, so the lesion mask is consistent with it by construction.

The displacement field is a coarse grid (one control point every ``grid_mm`` mm) of Gaussian
offsets (std ``amplitude_mm``), upsampled with cubic splines (to 1/4 resolution, then linearly):
smooth, diffeomorphic in practice
for amplitudes well below the grid spacing.

Flips: a left-right flip turns a normal abdomen into situs inversus and exchanges lobes that have
no counterpart (3 right vs 2 left lung lobes), so :func:`flip_allowed` only permits it when no
unpaired lateral organ (:data:`UNPAIRED_LATERAL`: liver, spleen, stomach, pancreas, gallbladder,
heart and great vessels, bowel with a side, the lungs) is present. A flip then exchanges every
paired label (:data:`LR_PAIRS`, built from TotalSegmentator's names: ``hip_left`` <->
``hip_right``, ``rib_left_7`` <-> ``rib_right_7``...), so each label stays on the patient's side
its name says in world coordinates.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import ndimage

from ..data import TOTAL_V2


def _mirror_name(name: str) -> str:
    """``hip_left`` -> ``hip_right``; ``rib_left_7`` -> ``rib_right_7``; others unchanged."""
    swap = {"left": "right", "right": "left"}
    return "_".join(swap.get(part, part) for part in name.split("_"))


def lr_pairs(table: Mapping[int, str]) -> dict[int, int]:
    """Left/right label pairs of a label table, from the names: id -> id of its mirror label.

    Args:
        table: id -> name, with sides written as a ``left``/``right`` name part (TotalSegmentator).

    Returns:
        Both directions of every pair; labels without a mirror name are absent.
    """
    by_name = {name: i for i, name in table.items()}
    pairs = {}
    for i, name in table.items():
        mirror = _mirror_name(name)
        if mirror != name and mirror in by_name:
            pairs[i] = by_name[mirror]
    return pairs


#: TotalSegmentator v2 left/right label pairs that a left-right flip exchanges (both directions).
LR_PAIRS: dict[int, int] = lr_pairs(TOTAL_V2)
#: Organs that lie on one side (or whose sides differ) without a mirror label; a flip would put
#: them on the wrong side (situs inversus), so none may be present for a flip.
_UNPAIRED_NAMES = (
    "spleen", "gallbladder", "liver", "stomach", "pancreas", "duodenum", "colon", "heart", "aorta",
    "inferior_vena_cava", "portal_vein_and_splenic_vein", "brachiocephalic_trunk",
    "pulmonary_vein", "superior_vena_cava",
)  # fmt: skip
UNPAIRED_LATERAL: frozenset[int] = frozenset(
    i
    for i, name in TOTAL_V2.items()
    if name in _UNPAIRED_NAMES
    or name.startswith("lung_")  # 3 right vs 2 left lobes, the cardiac notch
    or (_mirror_name(name) != name and i not in LR_PAIRS)  # a side without its mirror
)


def deformation_field(
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    rng: np.random.Generator,
    *,
    amplitude_mm: float = 4.0,
    grid_mm: float = 50.0,
) -> np.ndarray:
    """Smooth random displacement field in voxels, float32 (3, X, Y, Z)."""
    sp = np.asarray(spacing, dtype=np.float64)
    coarse = tuple(max(2, int(np.ceil(n * s / grid_mm)) + 1) for n, s in zip(shape, sp, strict=True))
    # Cubic splines from the control grid to a 1/4-resolution grid, then linear to full resolution:
    # smooth (the linear step interpolates an already smooth field) and ~10x cheaper than cubic.
    mid = tuple(max(2, -(-n // 4)) for n in shape)
    field = np.empty((3, *shape), dtype=np.float32)
    for axis in range(3):
        ctrl = rng.normal(0.0, amplitude_mm / sp[axis], size=coarse)
        low = ndimage.zoom(ctrl, [m / c for m, c in zip(mid, coarse, strict=True)], order=3, mode="nearest",
                           grid_mode=True)
        up = ndimage.zoom(low.astype(np.float32), [n / m for n, m in zip(shape, low.shape, strict=True)], order=1,
                          mode="nearest", grid_mode=True)
        field[axis] = up[: shape[0], : shape[1], : shape[2]]
    return field


def warp(
    ct: np.ndarray, organs: np.ndarray, field: np.ndarray, *, air_hu: float = -1024.0
) -> tuple[np.ndarray, np.ndarray]:
    """Warp CT (linear) and organ map (nearest) with the same displacement ``field`` (voxels)."""
    grid = np.indices(ct.shape, dtype=np.float32) + field
    ct_w = ndimage.map_coordinates(ct, grid, order=1, mode="constant", cval=air_hu, prefilter=False)
    org_w = ndimage.map_coordinates(organs, grid, order=0, mode="constant", cval=0, prefilter=False)
    return ct_w.astype(np.float32), org_w.astype(organs.dtype)


def jitter_intensity(ct: np.ndarray, rng: np.random.Generator, *, scale: float = 0.03, offset_hu: float = 8.0) -> np.ndarray:
    """Global intensity jitter of tissue voxels (> -500 HU): ``hu * (1 + s) + o``."""
    s = rng.uniform(-scale, scale)
    o = rng.uniform(-offset_hu, offset_hu)
    out = ct.copy()
    tissue = out > -500
    out[tissue] = out[tissue] * (1.0 + s) + o
    return out


def flip_allowed(organs: np.ndarray) -> bool:
    """True when a left-right flip keeps the anatomy plausible (see module docstring)."""
    present = set(np.unique(organs).tolist())
    return not (present & UNPAIRED_LATERAL)


def flip_lr(ct: np.ndarray, organs: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip along the axis closest to patient left-right and swap paired labels."""
    axis = int(np.argmax(np.abs(affine[0, :3])))
    ct_f = np.flip(ct, axis=axis).copy()
    org_f = np.flip(organs, axis=axis).copy()
    lut = np.arange(max(int(org_f.max()), max(LR_PAIRS)) + 1)
    lut[list(LR_PAIRS)] = list(LR_PAIRS.values())
    return ct_f, lut[org_f].astype(organs.dtype)


def augment(
    ct: np.ndarray,
    organs: np.ndarray,
    spacing: tuple[float, float, float],
    affine: np.ndarray,
    rng: np.random.Generator,
    *,
    amplitude_mm: float = 4.0,
) -> tuple[np.ndarray, np.ndarray, dict[str, object]]:
    """Deform, jitter and (where allowed, with probability 1/2) flip one template.

    Returns:
        ``(ct, organs, info)`` with ``info = {"amplitude_mm", "flipped"}``.
    """
    field = deformation_field(ct.shape, spacing, rng, amplitude_mm=amplitude_mm)  # type: ignore[arg-type]
    ct2, org2 = warp(ct, organs, field)
    ct2 = jitter_intensity(ct2, rng)
    flipped = False
    if flip_allowed(org2) and rng.random() < 0.5:
        ct2, org2 = flip_lr(ct2, org2, affine)
        flipped = True
    return ct2, org2, {"amplitude_mm": amplitude_mm, "flipped": flipped}
