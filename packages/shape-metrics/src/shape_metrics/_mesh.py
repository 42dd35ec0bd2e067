"""Surface mesh of a binary mask with pyradiomics' marching-cubes conventions (vectorised numpy).

pyradiomics (``radiomics/shape.py`` with its C extension) pads the mask by one voxel and runs
classic marching cubes (Lorensen & Cline) over every 2x2x2 cell of the padded mask, placing
vertices at edge midpoints (the 0.5 iso-level of a binary image) and scaling by the spacing. Two
conventions decide the exact triangles, hence the surface area to the last digit:

1. Cell configurations whose last corner (offset (1, 1, 0) in pyradiomics' (z, y, x) order) is
   inside are replaced by their complement, and the volume contribution is negated. The
   complement is triangulated like the original only when the configuration is unambiguous, so
   this choice changes the mesh of irregular masks (checkerboard-like cells).
2. The triangles of the 128 remaining configurations are the classic Lorensen table. We do not
   copy that table: we obtain it once by running scikit-image's classic (``method="lorensen"``)
   marching cubes on each single-cell configuration, which yields the same triangles.

The volume is the signed sum of tetrahedra spanned by each triangle and the corner of the padded
array (divergence theorem); because convention 1 can leave small holes on ambiguous faces, that
origin matters for irregular masks, so we keep it (cropping to the bounding box only shifts cell
indices). With these conventions area and volume equal pyradiomics' ``SurfaceArea`` and
``MeshVolume`` to floating-point rounding (tested).

Array convention here: the mask is (X, Y, Z) with spacing (sx, sy, sz); we reverse both to match
pyradiomics' (z, y, x) view of a SimpleITK image built from the same data.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["MaskMesh", "mask_mesh"]

# Corner k of a cell, as (z, y, x) offsets, with pyradiomics' bit order (bit k <-> corner k).
_CORNERS = np.array(
    [[0, 0, 0], [0, 0, 1], [0, 1, 1], [0, 1, 0], [1, 0, 0], [1, 0, 1], [1, 1, 1], [1, 1, 0]],
    dtype=np.intp,
)


@functools.cache
def _triangle_table() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Triangles of the 128 cell configurations with corner 7 outside, plus volume terms.

    Returns:
        ``(tris, counts, det0, nvec)``: ``tris`` (128, 5, 3, 3) float64 vertex offsets in cell
        units (values in {0, 0.5, 1}), outward winding; ``counts`` (128,) triangles per
        configuration; ``det0`` (128,) and ``nvec`` (128, 3), the per-configuration sums over
        triangles of ``det(a, b, c)`` and ``b x c + c x a + a x b`` (see :func:`mask_mesh`).
    """
    from skimage.measure import marching_cubes

    tris = np.zeros((128, 5, 3, 3), dtype=np.float64)
    counts = np.zeros(128, dtype=np.intp)
    for config in range(1, 128):
        cell = np.zeros((2, 2, 2), dtype=np.float32)
        for k in range(8):
            if config >> k & 1:
                cell[tuple(_CORNERS[k])] = 1.0
        verts, faces, _, _ = marching_cubes(cell, 0.5, method="lorensen", allow_degenerate=True)
        counts[config] = len(faces)
        # scikit-image orients faces the opposite way to pyradiomics: reverse the winding so that
        # the signed volume of a mask is positive.
        tris[config, : len(faces)] = verts[faces][:, ::-1, :]
    a, b, c = tris[..., 0, :], tris[..., 1, :], tris[..., 2, :]
    det0 = np.einsum("cti,cti->c", a, np.cross(b, c))
    nvec = (np.cross(b, c) + np.cross(c, a) + np.cross(a, b)).sum(axis=1)
    return tris, counts, det0, nvec


class MaskMesh:
    """Marching-cubes surface of a mask (pyradiomics conventions), in mm.

    Area and volume are computed from per-configuration tables without building the triangles;
    :attr:`triangles` builds them on first use (for convexity and export).

    Attributes:
        area: surface area in mm^2 (pyradiomics ``SurfaceArea``).
        volume: enclosed volume in mm^3 (pyradiomics ``MeshVolume``).
        hull_points: (P, 3) mesh vertices in mm, (x, y, z) order, a superset of the vertices of
            their convex hull (see :func:`_hull_candidates`).
    """

    def __init__(self, *, cells: np.ndarray, configs: np.ndarray, flipped: np.ndarray,
                 spacing_zyx: np.ndarray, area: float, volume: float, hull_points: np.ndarray) -> None:
        self._cells = cells
        self._configs = configs
        self._flipped = flipped
        self._sp = spacing_zyx
        self.area = area
        self.volume = volume
        self.hull_points = hull_points

    @functools.cached_property
    def triangles(self) -> np.ndarray:
        """(F, 3, 3) float64 triangle vertices in mm, (x, y, z) order, outward winding.

        The origin is the corner of the mask padded by one voxel: voxel (i, j, k) of the mask is
        centred at ((i+1) sx, (j+1) sy, (k+1) sz).
        """
        tris, counts, _, _ = _triangle_table()
        ntri = counts[self._configs]
        owner = np.repeat(np.arange(len(self._configs)), ntri)
        slot = np.arange(len(owner)) - np.repeat(np.cumsum(ntri) - ntri, ntri)
        t = (tris[self._configs[owner], slot] + self._cells[owner][:, None, :]) * self._sp
        # Complemented cells are wound inwards: reverse them (pyradiomics' sign correction).
        inward = self._flipped[owner]
        t[inward] = t[inward][:, ::-1]
        # Back to (x, y, z): reversing the axis order mirrors the winding, so also reverse the
        # vertex order of each triangle to keep normals pointing outwards.
        return np.ascontiguousarray(t[:, ::-1, ::-1])

    @property
    def vertices(self) -> np.ndarray:
        """(V, 3) unique vertex coordinates in mm."""
        return np.unique(self.triangles.reshape(-1, 3), axis=0)

    def to_trimesh(self):  # -> trimesh.Trimesh
        """Return a ``trimesh.Trimesh`` with merged vertices (for export or inspection)."""
        import trimesh

        flat = self.triangles.reshape(-1, 3)
        verts, inverse = np.unique(flat, axis=0, return_inverse=True)
        return trimesh.Trimesh(verts, inverse.reshape(-1, 3), process=False)


def _not_vertex(h: np.ndarray, lower: bool) -> np.ndarray:
    """Grid points of a height map that cannot be hull vertices (see :func:`_hull_candidates`)."""
    drop = np.zeros(h.shape, dtype=bool)
    for ax in range(2):
        a = np.moveaxis(h, ax, 0)
        mid = 0.5 * (a[:-2] + a[2:])
        d = np.moveaxis(drop, ax, 0)
        with np.errstate(invalid="ignore"):
            d[1:-1] |= (a[1:-1] >= mid) if lower else (a[1:-1] <= mid)
    return drop


def _hull_candidates(padded: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """A superset of the convex-hull vertices of the mesh, in padded (z, y, x) index units.

    Every mesh vertex sits on a grid line (along axis ``d``, through integer coordinates in the
    other two axes) between an inside and an outside voxel; on each line all vertices lie between
    the first and the last, so those two suffice. Further, the first vertices of the lines along
    ``d`` form a height map ``f(u, v)``; if ``f(u) >= (f(u-1) + f(u+1)) / 2`` the point lies on
    the segment between the chord midpoint of its neighbours and the last vertex of its own line,
    so it is a convex combination of other vertices and not a hull vertex (likewise with ``<=``
    for the last vertices). Dropping such points leaves the hull unchanged.
    """
    pts = []
    for axis in range(3):
        change = np.diff(padded, axis=axis) != 0  # crossing between i and i+1 along axis
        has = change.any(axis=axis)
        first = np.argmax(change, axis=axis).astype(np.float64) + 0.5
        last = change.shape[axis] - 1 - np.argmax(np.flip(change, axis=axis), axis=axis) + 0.5
        first[~has] = np.nan
        last[~has] = np.nan
        others = [d for d in range(3) if d != axis]
        for h, lower in ((first, True), (last, False)):
            keep = has & ~_not_vertex(h, lower)
            rest = np.nonzero(keep)
            p = np.empty((len(rest[0]), 3), dtype=np.float64)
            p[:, axis] = h[keep]
            p[:, others[0]] = rest[0]
            p[:, others[1]] = rest[1]
            pts.append(p)
    return np.concatenate(pts) + offset


def mask_mesh(
    mask: np.ndarray, spacing: tuple[float, float, float], *, offset: tuple[int, int, int] = (0, 0, 0)
) -> MaskMesh:
    """Mesh a validated non-empty boolean (X, Y, Z) mask with pyradiomics' conventions.

    Volume by the divergence theorem, per cell at integer position ``p`` with triangle offsets
    ``(a, b, c)`` and spacing ``S = diag(s)``: ``det(S(p+a), S(p+b), S(p+c)) = det(S) [det(a, b, c)
    + p . (b x c + c x a + a x b)]`` (multilinearity; terms with two ``p`` vanish), so the sum
    over a configuration's triangles is a table lookup plus a dot product.

    Args:
        mask: (X, Y, Z) bool, at least one True voxel.
        spacing: (sx, sy, sz) mm.
        offset: voxel index of ``mask[0, 0, 0]`` in a larger array it was cropped from; the
            mesh is placed as if that larger array had been meshed (same volume origin).

    Returns:
        The surface as a :class:`MaskMesh`.
    """
    # pyradiomics' view: (z, y, x) array and spacing.
    m = mask.transpose(2, 1, 0)
    sp = np.asarray(spacing[::-1], dtype=np.float64)
    nz = (np.nonzero(m.any(axis=(1, 2)))[0], np.nonzero(m.any(axis=(0, 2)))[0], np.nonzero(m.any(axis=(0, 1)))[0])
    lo = np.array([a[0] for a in nz])
    hi = np.array([a[-1] + 1 for a in nz])
    padded = np.pad(m[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]], 1).astype(np.uint8)
    lo = lo + np.asarray(offset[::-1])
    cshape = tuple(s - 1 for s in padded.shape)
    config = np.zeros(cshape, dtype=np.uint8)
    for k, (a, b, c) in enumerate(_CORNERS):
        config |= padded[a : a + cshape[0], b : b + cshape[1], c : c + cshape[2]] << np.uint8(k)
    flipped_all = (config & 0x80) != 0
    config[flipped_all] ^= 0xFF
    cells = np.nonzero(config)
    cfg = config[cells]
    flipped = flipped_all[cells]
    sign = np.where(flipped, -1.0, 1.0)
    # Cell index in the full padded array = cropped index + crop offset (pyradiomics' origin).
    pos = np.stack(cells, axis=1).astype(np.float64) + lo
    tris, _, det0, nvec = _triangle_table()
    # Area: per-configuration triangle areas at this spacing (translation invariant).
    st = tris * sp
    area_table = 0.5 * np.linalg.norm(np.cross(st[..., 0, :] - st[..., 2, :], st[..., 1, :] - st[..., 2, :]), axis=-1).sum(1)
    area = float(area_table[cfg].sum())
    vol_cells = sign * (det0[cfg] + np.einsum("ij,ij->i", pos, nvec[cfg]))
    volume = float(np.prod(sp) * vol_cells.sum() / 6.0)
    hull_points = (_hull_candidates(padded, lo) * sp)[:, ::-1]
    return MaskMesh(cells=pos, configs=cfg, flipped=flipped, spacing_zyx=sp, area=area, volume=volume,
                    hull_points=np.ascontiguousarray(hull_points))
