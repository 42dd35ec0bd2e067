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
from dataclasses import dataclass

import numpy as np

__all__ = ["MaskMesh", "mask_mesh"]

# Corner k of a cell, as (z, y, x) offsets, with pyradiomics' bit order (bit k <-> corner k).
_CORNERS = np.array(
    [[0, 0, 0], [0, 0, 1], [0, 1, 1], [0, 1, 0], [1, 0, 0], [1, 0, 1], [1, 1, 1], [1, 1, 0]],
    dtype=np.intp,
)


@functools.cache
def _triangle_table() -> tuple[np.ndarray, np.ndarray]:
    """Triangles of the 128 cell configurations with corner 7 outside.

    Returns:
        ``(tris, counts)``: ``tris`` (128, 5, 3, 3) float64 vertex offsets in cell units (values in
        {0, 0.5, 1}), ``counts`` (128,) number of triangles per configuration.
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
    return tris, counts


@dataclass(frozen=True)
class MaskMesh:
    """Triangle soup of a mask surface, in mm, in the mask's (x, y, z) axis order.

    Attributes:
        triangles: (F, 3, 3) float64 vertex coordinates in mm; the origin is the corner of the
            mask padded by one voxel (voxel (i, j, k) of the mask is centred at (i+1, j+1, k+1) *
            spacing).
        area: surface area in mm^2 (pyradiomics ``SurfaceArea``).
        volume: enclosed volume in mm^3 (pyradiomics ``MeshVolume``).
    """

    triangles: np.ndarray
    area: float
    volume: float

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


def mask_mesh(mask: np.ndarray, spacing: tuple[float, float, float]) -> MaskMesh:
    """Mesh a validated non-empty boolean (X, Y, Z) mask with pyradiomics' conventions.

    Args:
        mask: (X, Y, Z) bool, at least one True voxel.
        spacing: (sx, sy, sz) mm.

    Returns:
        The surface as a :class:`MaskMesh`.
    """
    # pyradiomics' view: (z, y, x) array and spacing.
    m = mask.transpose(2, 1, 0)
    sp = np.asarray(spacing[::-1], dtype=np.float64)
    nz = np.nonzero(m.any(axis=(1, 2)))[0], np.nonzero(m.any(axis=(0, 2)))[0], np.nonzero(m.any(axis=(0, 1)))[0]
    lo = np.array([a[0] for a in nz])
    hi = np.array([a[-1] + 1 for a in nz])
    crop = m[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    padded = np.pad(crop, 1).astype(np.uint8)
    cshape = tuple(s - 1 for s in padded.shape)
    config = np.zeros(cshape, dtype=np.uint8)
    for k, (a, b, c) in enumerate(_CORNERS):
        config |= padded[a : a + cshape[0], b : b + cshape[1], c : c + cshape[2]] << np.uint8(k)
    flipped = (config & 0x80) != 0
    config[flipped] ^= 0xFF
    cells = np.nonzero(config)
    cfg = config[cells]
    sign = np.where(flipped[cells], -1.0, 1.0)
    # Cell index in the full padded array = cropped index + crop offset (keeps pyradiomics' origin).
    pos = np.stack(cells, axis=1).astype(np.float64) + lo
    tris, counts = _triangle_table()
    ntri = counts[cfg]
    owner = np.repeat(np.arange(len(cfg)), ntri)
    slot = np.arange(len(owner)) - np.repeat(np.cumsum(ntri) - ntri, ntri)
    t = (tris[cfg[owner], slot] + pos[owner][:, None, :]) * sp
    # Triangles of complemented cells are wound inwards; reversing them (one swap negates the
    # triple product) is pyradiomics' sign correction and gives a consistently oriented mesh.
    inward = sign[owner] < 0
    t[inward] = t[inward][:, ::-1]
    a, b, c = t[:, 0], t[:, 1], t[:, 2]
    volume = float(np.sum(np.einsum("ij,ij->i", np.cross(a, b), c)) / 6.0)
    area = float(0.5 * np.linalg.norm(np.cross(a - c, b - c), axis=1).sum())
    # Back to (x, y, z) coordinates; reversing the axis order mirrors the winding, so also
    # reverse the vertex order of each triangle to keep normals pointing outwards.
    tri_xyz = np.ascontiguousarray(t[:, ::-1, ::-1])
    return MaskMesh(triangles=tri_xyz, area=area, volume=volume)
