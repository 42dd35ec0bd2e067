"""Projection-based 3D convexity of Lian, Godil, Rosin & Sun (CVPR 2012), on the mask mesh.

For a closed mesh with faces ``f`` (area ``A_f``, unit normal ``n_f``) in orientation ``R``,

    C_R = [ sum over the six views of the silhouette area ]
          / [ sum_f A_f (|n_x| + |n_y| + |n_z|) ]                       (Lian et al., Eq. 3-4)

Viewed along an axis, each face projects with area ``A_f |n_axis|``. A ray through a convex body
meets its surface twice, so the faces cover the silhouette exactly twice per axis and ``C_R = 1``;
for a non-convex body some points of the silhouette are covered four or more times and
``C_R < 1``. The measure is ``C = min_R C_R`` (the paper's minimum over orientations).

Implementation choices (stated because the paper leaves them open):

* Silhouette areas are rasterised: the projected triangles are tested against pixel centres of a
  grid with pixel size ``min(spacing) / resolution`` (default 2 pixels per smallest voxel side),
  and the union is counted. The opposite view (e.g. -x) has the same silhouette as +x, so the six
  views are twice the three axis views. Rasterisation error is about one pixel along the outline.
* Rotation search: the identity, then ``n_rotations`` (default 12) rotations drawn uniformly
  from SO(3) with a fixed seed (deterministic), then Nelder-Mead refinement of the best one over
  its rotation vector (at most ``refine_evals`` evaluations, default 20). The measure is
  invariant to the 24 symmetries of the cube, so this samples the orientation space densely
  enough for lesion-like shapes; raise ``n_rotations`` for more accuracy.
* The result is clipped to at most 1 (rasterisation can overshoot by a pixel's worth).

Voxelised convex shapes score slightly below 1 (the staircase mesh has small concavities; a
voxelised sphere of radius 8 voxels scores about 0.97); L-shapes, crescents and spiculated
shapes score clearly lower.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.spatial.transform import Rotation

from shape_metrics._mesh import mask_mesh
from shape_metrics._validate import as_mask, as_spacing
from shape_metrics.exceptions import ShapeMetricsError

__all__ = ["convexity", "mesh_convexity"]


def _silhouette_area(tri2d: np.ndarray, pixel: float) -> float:
    """Area of the union of 2D triangles (F, 3, 2) by pixel-centre sampling.

    Only counter-clockwise (front-facing) triangles are passed in: for a closed mesh every ray
    through the solid enters through a front face, so they cover the silhouette exactly.
    Triangles are grouped by their pixel span so that each is tested only against the pixels of
    its own bounding box.
    """
    if len(tri2d) == 0:
        return 0.0
    lo = tri2d.reshape(-1, 2).min(axis=0) - pixel
    t = (tri2d - lo) / pixel  # pixel units; pixel (i, j) has centre (i + 0.5, j + 0.5)
    tmin = np.floor(t.min(axis=1) - 0.5).astype(np.intp)  # first candidate pixel index
    spans = (np.ceil((t.max(axis=1) - t.min(axis=1)).max(axis=1)) + 2).astype(np.intp)
    hits_all = []
    for span in np.unique(spans):
        sel = spans == span
        ts, tm = t[sel], tmin[sel]
        off = np.stack(np.meshgrid(np.arange(span), np.arange(span), indexing="ij"), -1).reshape(-1, 2)
        pix = tm[:, None, :] + off[None]  # (F, K, 2)
        c = pix + 0.5
        inside = np.ones(c.shape[:2], dtype=bool)
        for i in range(3):  # counter-clockwise: inside is left of every edge (inclusive)
            a = ts[:, i][:, None, :]
            b = ts[:, (i + 1) % 3][:, None, :]
            e = (b[..., 0] - a[..., 0]) * (c[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (c[..., 0] - a[..., 0])
            inside &= e >= -1e-9
        hits_all.append(pix[inside])
    hits = np.concatenate(hits_all)
    if len(hits) == 0:
        return 0.0
    width = int(hits[:, 1].max()) + 1
    flat = np.unique(hits[:, 0].astype(np.int64) * width + hits[:, 1])
    return float(len(flat) * pixel * pixel)


def _front(tri2d: np.ndarray) -> np.ndarray:
    p0, p1, p2 = tri2d[:, 0], tri2d[:, 1], tri2d[:, 2]
    cross = (p1[:, 0] - p0[:, 0]) * (p2[:, 1] - p0[:, 1]) - (p1[:, 1] - p0[:, 1]) * (p2[:, 0] - p0[:, 0])
    return tri2d[cross > 1e-12]


def _ratio(tris: np.ndarray, areas_normals: np.ndarray, rot: np.ndarray, pixel: float) -> float:
    r = tris @ rot.T
    # Views along +x, +y, +z (projection planes (y, z), (z, x), (x, y), right-handed so that
    # outward faces towards the viewer are counter-clockwise); -x, -y, -z give the same areas.
    silhouettes = sum(_silhouette_area(_front(r[..., [a, b]]), pixel) for a, b in ((1, 2), (2, 0), (0, 1)))
    denom = np.abs(areas_normals @ rot.T).sum()  # sum_f A_f * ||R n_f||_1
    return float(2.0 * silhouettes / denom)


def mesh_convexity(
    triangles: np.ndarray,
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    resolution: int = 2,
    n_rotations: int = 12,
    refine_evals: int = 20,
) -> float:
    """Lian et al. convexity of a closed triangle mesh.

    Args:
        triangles: (F, 3, 3) vertex coordinates in mm.
        spacing: voxel size the mesh came from; sets the raster pixel ``min(spacing)/resolution``.
        resolution: raster pixels per smallest voxel side (>= 1).
        n_rotations: random (seeded) orientations tried after the identity (>= 0).
        refine_evals: Nelder-Mead evaluations refining the best orientation (0 disables).

    Returns:
        Convexity in (0, 1].
    """
    if resolution < 1 or n_rotations < 0 or refine_evals < 0:
        raise ShapeMetricsError(
            f"resolution must be >= 1 and n_rotations, refine_evals >= 0; got {resolution}, "
            f"{n_rotations}, {refine_evals}."
        )
    tris = np.asarray(triangles, dtype=np.float64)
    tris = tris - tris.reshape(-1, 3).mean(axis=0)
    # A_f n_f = half the cross product of two edges.
    an = 0.5 * np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0])
    pixel = float(min(spacing)) / resolution
    rots = [np.eye(3)]
    if n_rotations:
        rots += list(Rotation.random(n_rotations, random_state=20120616).as_matrix())
    values = [_ratio(tris, an, r, pixel) for r in rots]
    best = int(np.argmin(values))
    result = values[best]
    if refine_evals:
        x0 = Rotation.from_matrix(rots[best]).as_rotvec()
        res = minimize(
            lambda v: _ratio(tris, an, Rotation.from_rotvec(v).as_matrix(), pixel),
            x0,
            method="Nelder-Mead",
            options={"maxfev": refine_evals, "initial_simplex": x0 + np.vstack([np.zeros(3), 0.15 * np.eye(3)])},
        )
        result = min(result, float(res.fun))
    return float(min(result, 1.0))


def convexity(
    mask: Any,
    spacing: Sequence[float],
    *,
    resolution: int = 2,
    n_rotations: int = 12,
    refine_evals: int = 20,
) -> float:
    """Projection-based convexity (Lian et al., CVPR 2012) of a binary mask's surface mesh.

    The mesh is the one used by :func:`shape_metrics.sphericity` (marching cubes on the mask
    padded by one voxel, with the spacing). See the module docstring for the definition and the
    rotation search.

    Args:
        mask: (X, Y, Z) binary array, non-empty.
        spacing: voxel size in mm, (sx, sy, sz).
        resolution: raster pixels per smallest voxel side.
        n_rotations: seeded random orientations tried after the identity.
        refine_evals: Nelder-Mead evaluations around the best orientation.

    Returns:
        Value in (0, 1]; about 0.97-1 for voxelised convex shapes, lower for concave ones.
    """
    sp = as_spacing(spacing)
    mesh = mask_mesh(as_mask(mask), sp)
    return mesh_convexity(
        mesh.triangles, spacing=sp, resolution=resolution, n_rotations=n_rotations, refine_evals=refine_evals
    )
