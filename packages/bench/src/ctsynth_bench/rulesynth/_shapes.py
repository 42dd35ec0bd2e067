"""Lesion masks from the mask attributes of a report (shape, location, size, spiculation).

All functions are pure numpy/scipy functions of (organ map, a seed point in voxels, spacing,
attribute values, ``numpy.random.Generator``). They work in a crop around the seed and return the
crop's slices with a boolean mask, so the cost depends on the lesion size, not on the CT size.

Shapes (rule table in ``_rules``):

- ``round``: ellipsoid with the report's three diameters, random orientation.
- ``cystic``: the same with the axis ratio clipped to 1.25 (smooth, near-spherical).
- ``irregular``: ellipsoid whose normalised radius is ``1 + a f(u)`` for a smooth random function
  ``f`` of the direction ``u`` (a low-resolution Gaussian random field sampled on the unit sphere).
- ``punctate``: a compact focus of 2-8 mm diameter.
- ``wall_thickening``: the organ voxels within ``t`` mm of the organ surface (4-12 mm) and within the
  report's extent of a seed on the wall: a patch of wall thickened inward.
- ``protrusion``: half-ellipsoid centred on the wall, grown into the lumen (kept inside the organ).
- ``narrowing``: around a centre-line seed, the organ voxels within 70 % of the local lumen radius
  of the organ surface: a circumferential band that narrows the lumen.

Location rules: ``within`` (parenchymal) and ``lumen`` keep the mask inside the organ;
``protruding`` allows it outside the organ into background (never into another organ);
``wall`` shapes are inside the organ by construction.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ._rules import LesionSpec, SynthError

_MIN_VOXELS = 1


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniform random 3x3 rotation matrix (QR of a Gaussian matrix with sign fix)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def crop_slices(center: np.ndarray, half_mm: float, spacing: np.ndarray, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """Slices of a box of half-width ``half_mm`` around ``center`` (voxels), clipped to ``shape``."""
    half = np.ceil(half_mm / spacing).astype(int) + 1
    c = np.round(center).astype(int)
    return tuple(slice(max(0, c[i] - half[i]), min(shape[i], c[i] + half[i] + 1)) for i in range(3))


def _coords_mm(sl: tuple[slice, ...], center: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """(3, x, y, z) offsets in mm of every crop voxel from ``center``."""
    grids = np.meshgrid(*[np.arange(s.start, s.stop, dtype=np.float64) for s in sl], indexing="ij")
    return np.stack([(g - center[i]) * spacing[i] for i, g in enumerate(grids)])


def _direction_field(rng: np.random.Generator, *, grid: int = 9, smooth: float = 1.6) -> np.ndarray:
    """A smooth zero-mean, unit-std random field on [-1, 1]^3 sampled on a ``grid``^3 lattice."""
    field = ndimage.gaussian_filter(rng.normal(size=(grid,) * 3), smooth, mode="wrap")
    field -= field.mean()
    return field / (field.std() + 1e-8)


def ellipsoid(
    sl: tuple[slice, ...],
    center: np.ndarray,
    radii_mm: np.ndarray,
    spacing: np.ndarray,
    rotation: np.ndarray,
    *,
    irregularity: float = 0.0,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Boolean ellipsoid (optionally with a smoothly perturbed radius) in the crop ``sl``.

    The normalised radius is ``|R^T x / r|``; a voxel is inside when it is at most
    ``1 + irregularity * f(u)`` with ``f`` a smooth unit-std field of the direction ``u``.
    """
    local = np.einsum("ji,j...->i...", rotation, _coords_mm(sl, center, spacing))
    norm = np.sqrt(sum((local[i] / radii_mm[i]) ** 2 for i in range(3)))
    limit: np.ndarray | float = 1.0
    if irregularity > 0:
        if rng is None:
            raise SynthError("an irregular ellipsoid needs a random generator")
        field = _direction_field(rng)
        unit = local / np.maximum(np.sqrt((local**2).sum(0)), 1e-6)
        idx = (unit + 1.0) * (field.shape[0] - 1) / 2.0
        f = ndimage.map_coordinates(field, idx.reshape(3, -1), order=1, mode="nearest").reshape(norm.shape)
        limit = np.clip(1.0 + irregularity * f, 0.35, 1.8)
    return norm <= limit


def add_spicules(
    mask: np.ndarray, spacing: np.ndarray, rng: np.random.Generator, *, radius_mm: float
) -> np.ndarray:
    """Add 6-10 thin straight spikes from the mask's centroid outward (spiculated margin)."""
    out = mask.copy()
    com = np.array(ndimage.center_of_mass(mask))
    n = int(rng.integers(6, 11))
    step = float(spacing.min()) * 0.5
    for _ in range(n):
        u = rng.normal(size=3)
        u /= np.linalg.norm(u)
        length = radius_mm * rng.uniform(1.8, 2.6)
        for t in np.arange(0.0, length, step):
            p = np.round(com + u * t / spacing).astype(int)
            if np.any(p < 0) or np.any(p >= np.array(mask.shape)):
                break
            out[tuple(p)] = True
    return out


def _nearest(candidates: np.ndarray, target: np.ndarray, rng: np.random.Generator, *, k: int = 5) -> np.ndarray:
    """One of the ``k`` candidate voxels (N, 3) nearest to ``target``, at random."""
    d = ((candidates - target) ** 2).sum(1)
    idx = np.argsort(d)[: max(1, min(k, len(d)))]
    return candidates[rng.choice(idx)].astype(np.float64)


def lesion_mask(
    spec: LesionSpec,
    organ: np.ndarray,
    allowed: np.ndarray,
    spacing: tuple[float, float, float],
    target: np.ndarray,
    rng: np.random.Generator,
    *,
    depth: np.ndarray | None = None,
) -> np.ndarray:
    """Generate the lesion mask of ``spec`` near ``target`` (voxel coordinates).

    Args:
        spec: canonical report categories.
        organ: bool (X, Y, Z), the target organ.
        allowed: bool (X, Y, Z), voxels a protruding lesion may occupy outside the organ
            (background, not another organ).
        spacing: voxel size in mm.
        target: (3,) float, the preferred centre (e.g. a report-bbox centre); snapped to a valid seed.
        rng: random generator.
        depth: optional precomputed distance (mm) of each organ voxel to the organ surface.

    Returns:
        bool (X, Y, Z) lesion mask, non-empty.

    Raises:
        SynthError: the organ is empty or too small for the lesion.
    """
    if not organ.any():
        raise SynthError(f"organ {spec.organ!r} is absent from this template")
    sp = np.asarray(spacing, dtype=np.float64)
    if depth is None:  # on the organ's bounding box only (the cost scales with the organ, not the CT)
        pts = np.argwhere(organ)
        lo, hi = np.maximum(pts.min(0) - 2, 0), np.minimum(pts.max(0) + 3, organ.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        depth = np.zeros(organ.shape, dtype=np.float32)
        depth[box] = ndimage.distance_transform_edt(organ[box], sampling=sp)
    size = np.asarray(spec.size_mm, dtype=np.float64)
    radii = np.maximum(size / 2.0, sp.max() * 0.6)
    # A lesion never outgrows its organ: cap each radius at 45 % of the organ's smallest extent.
    ext = (np.ptp(np.argwhere(organ), axis=0) + 1) * sp
    radii = np.minimum(radii, max(0.45 * float(ext.min()), sp.max() * 0.6))
    out = np.zeros(organ.shape, dtype=bool)
    rot = random_rotation(rng)
    shape = spec.shape

    if shape in ("wall_thickening", "protrusion", "narrowing") or spec.location == "wall":
        if shape not in ("wall_thickening", "protrusion", "narrowing"):
            shape = "wall_thickening"
        if shape == "narrowing":
            # Seed on the centre line: a voxel of locally maximal depth near the target.
            local_max = (depth == ndimage.maximum_filter(depth, size=5)) & (depth > sp.min())
            cand = np.argwhere(local_max)
            if len(cand) == 0:
                cand = np.argwhere(organ)
            seed = _nearest(cand, target, rng)
            r_lumen = float(depth[tuple(seed.astype(int))])
            thick = max(0.7 * r_lumen, 4.0)
            extent = float(max(size.max() / 2.0, 2.0 * sp.max()))
        else:
            shell = organ & (depth <= sp.max() * 1.01)
            cand = np.argwhere(shell)
            seed = _nearest(cand, target, rng)
            extent = float(max(size.max() / 2.0, 2.0 * sp.max()))
            thick = float(np.clip(rng.uniform(4.0, 12.0), sp.max(), max(0.45 * extent, sp.max())))
        sl = crop_slices(seed, extent + thick + 2 * sp.max(), sp, organ.shape)
        if shape == "protrusion":
            grad = np.array([ndimage.sobel(depth[sl], axis=i) for i in range(3)])
            c_local = tuple(np.clip(np.round(seed - [s.start for s in sl]).astype(int), 0, np.array(grad.shape[1:]) - 1))
            normal = grad[(slice(None), *c_local)]
            nrm = np.linalg.norm(normal)
            normal = normal / nrm if nrm > 0 else rng.normal(size=3) / 1.7
            centre = seed + normal * (0.2 * radii.min()) / sp
            crop = ellipsoid(sl, centre, radii, sp, rot) & organ[sl]
        else:
            dist = np.sqrt((_coords_mm(sl, seed, sp) ** 2).sum(0))
            crop = organ[sl] & (depth[sl] <= thick) & (dist <= extent)
    else:
        # Parenchymal / luminal lesions: seed deep enough in the organ for the lesion to fit.
        r_min = float(radii.min())
        if spec.location == "protruding":
            cand = np.argwhere(organ & (depth > 0.2 * r_min) & (depth <= 0.6 * r_min + sp.max()))
        else:
            want = 0.8 * r_min
            cand = np.argwhere(depth >= want)
            if len(cand) == 0:  # organ thinner than the lesion: use its deepest voxels
                cand = np.argwhere(depth >= 0.8 * depth.max())
        if len(cand) == 0:
            cand = np.argwhere(organ)
        seed = _nearest(cand, target, rng, k=20)
        if shape == "cystic":
            ratio = radii / radii.max()
            radii = radii.max() * np.clip(ratio, 0.8, 1.0)
        if shape == "punctate":
            radii = np.full(3, float(np.clip(radii.mean(), 0.6 * sp.max(), 4.0)))
        irregularity = float(rng.uniform(0.3, 0.45)) if shape == "irregular" else 0.0
        sl = crop_slices(seed, float(radii.max()) * (2.6 if "spiculated" in spec.features else 1.6) + 2 * sp.max(),
                         sp, organ.shape)
        crop = ellipsoid(sl, seed, radii, sp, rot, irregularity=irregularity, rng=rng)
        if "spiculated" in spec.features:
            crop = add_spicules(crop, sp, rng, radius_mm=float(radii.mean()))
        region = (organ[sl] | allowed[sl]) if spec.location == "protruding" else organ[sl]
        crop &= region
    if crop.sum() < _MIN_VOXELS:
        raise SynthError(f"{spec.lesion_type}: the lesion does not fit in the organ at this place")
    # Keep the largest connected component (one lesion per case).
    labels, n = ndimage.label(crop)
    if n > 1:
        sizes = ndimage.sum_labels(crop, labels, index=np.arange(1, n + 1))
        crop = labels == (int(np.argmax(sizes)) + 1)
    out[sl] = crop
    return out
