"""Body and lung masks derived from HU alone, labelled with TotalSegmentator v2 lung-lobe ids.

Used for chest cases whose source has no organ map (the pyradiomics lung cases and RIDER).

Method (all thresholds in HU, sizes in mm, so the result does not depend on the voxel size):

1. **Body**: voxels above -500 HU; the largest 3D connected component; holes filled slice by
   slice (axial), so the lungs and airways lie inside it.
2. **Lung**: voxels below -400 HU inside the body (air outside the body is excluded by (1)).
   In each axial slice, 2D components smaller than 300 mm^2 are dropped (trachea, main bronchi,
   bowel gas are small in cross-section); then 3D components smaller than 5% of the largest are
   dropped; finally holes are filled slice by slice so that vessels and nodules inside the lung
   become lung. Limitation: the apex and base tips of a lung, where its cross-section is below
   300 mm^2, are dropped along with the airways (a few percent of the lung volume at most).
3. **Left / right**: if two large 3D components remain, each is one lung (the one with the larger
   world ``x`` (RAS+, patient's right) is the right lung); voxels added by hole filling go by the
   midline between the two lungs' centres. If the lungs touch (one component), they are split at
   the body's centre line in ``x``.
4. **Lobe ids (an approximation, not an anatomical segmentation)**: the real fissures are oblique and
   cannot be found by thresholding. We split each lung by height into equal parts of its own
   superior-inferior extent: left lung upper half -> ``lung_upper_lobe_left`` (10), lower half ->
   ``lung_lower_lobe_left`` (11); right lung upper third -> ``lung_upper_lobe_right`` (12), middle
   third -> ``lung_middle_lobe_right`` (13), lower third -> ``lung_lower_lobe_right`` (14). So
   "which lung" is reliable; "which lobe" is only roughly right near the apex and the base.
5. A given lesion mask is added to the lung on its side (tumours abutting the pleura are otherwise
   left outside the lung by the threshold).
6. The thoracic oesophagus (``esophagus``, 15) is derived by :mod:`._esophagus` (a model-based
   delineation with its own limits); a CT on which it cannot be followed simply gets none.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

from ._esophagus import ESOPHAGUS_ID, derive_esophagus

log = logging.getLogger(__name__)

BODY_HU = -500.0
LUNG_HU = -400.0
MIN_SLICE_AREA_MM2 = 300.0
MIN_COMPONENT_FRACTION = 0.05

#: TotalSegmentator v2 ids of the lobes.
LEFT_LOBES = (10, 11)  # upper, lower
RIGHT_LOBES = (12, 13, 14)  # upper, middle, lower


def _largest_component(mask: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask)
    if n == 0:
        return mask.copy()
    sizes = ndimage.sum_labels(mask, lab, index=np.arange(1, n + 1))
    return lab == (int(np.argmax(sizes)) + 1)


def _fill_axial(mask: np.ndarray) -> np.ndarray:
    out = np.empty_like(mask)
    for k in range(mask.shape[2]):
        out[:, :, k] = ndimage.binary_fill_holes(mask[:, :, k])
    return out


def body_mask(hu: np.ndarray) -> np.ndarray:
    """Body mask (bool, same shape as ``hu``): step 1 of the module description."""
    return _fill_axial(_largest_component(hu > BODY_HU))


def _split_by_height(mask: np.ndarray, ids: tuple[int, ...], out: np.ndarray) -> None:
    zs = np.nonzero(mask.any(axis=(0, 1)))[0]
    if zs.size == 0:
        return
    lo, hi = zs[0], zs[-1] + 1
    edges = np.linspace(lo, hi, len(ids) + 1)
    z = np.arange(mask.shape[2])
    # ids are ordered superior -> inferior; RAS +z is superior, so the top part gets ids[0].
    for i, label in enumerate(ids):
        top = edges[len(ids) - i]
        bottom = edges[len(ids) - i - 1]
        sel = (z >= bottom) & (z < top)
        part = mask & sel[None, None, :]
        out[part] = label


def derive_chest_labels(
    hu: np.ndarray,
    affine: np.ndarray,
    *,
    lesion: np.ndarray | None = None,
    esophagus: bool = True,
    aorta: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Derive lung-lobe labels, the oesophagus and a body mask from a chest CT (module docstring).

    Args:
        hu: CT in HU, shape ``(X, Y, Z)``, RAS axis order (``+z`` superior).
        affine: 4x4 RAS affine of ``hu`` (its diagonal gives the voxel size and the ``x`` sign).
        lesion: optional 0/1 mask, same shape; added to the lung on its side.
        esophagus: also derive the thoracic oesophagus (id 15).
        aorta: optional aorta mask (a contrast CT's model output), used to keep the oesophagus out.

    Returns:
        ``(organs, body)``: uint8 TotalSegmentator v2 ids (0, 10-15) and uint8 0/1 body mask.
    """
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    body = body_mask(hu)
    lung = (hu < LUNG_HU) & body
    min_px = MIN_SLICE_AREA_MM2 / float(spacing[0] * spacing[1])
    for k in range(lung.shape[2]):
        lab, n = ndimage.label(lung[:, :, k])
        if n:
            sizes = ndimage.sum_labels(lung[:, :, k], lab, index=np.arange(1, n + 1))
            keep = np.concatenate([[False], sizes >= min_px])
            lung[:, :, k] = keep[lab]
    lab, n = ndimage.label(lung)
    organs = np.zeros(hu.shape, dtype=np.uint8)
    if n == 0:
        return organs, body.astype(np.uint8)
    sizes = ndimage.sum_labels(lung, lab, index=np.arange(1, n + 1))
    big = [i + 1 for i in np.argsort(sizes)[::-1] if sizes[i] >= MIN_COMPONENT_FRACTION * sizes.max()]
    lung = np.isin(lab, big)
    if lesion is not None:
        lung |= lesion.astype(bool)
    lung = _fill_axial(lung)
    # World x of every voxel column (RAS+: larger x = patient's right).
    xs = affine[0, 0] * np.arange(hu.shape[0]) + affine[0, 3]
    x_world = xs[:, None, None]
    if len(big) >= 2:
        comps = [lab == big[0], lab == big[1]]
        cx = [float(x_world[np.nonzero(c)[0], 0, 0].mean()) for c in comps]
        right_seed, left_seed = (comps[0], comps[1]) if cx[0] > cx[1] else (comps[1], comps[0])
        # Seed voxels keep their side; filled holes and lesion voxels go by the midline between
        # the two lungs' centres.
        mid = 0.5 * (cx[0] + cx[1])
        right = lung & (right_seed | (~left_seed & (x_world > mid)))
    else:
        body_x = x_world[np.nonzero(body)[0], 0, 0]
        mid = 0.5 * (float(body_x.min()) + float(body_x.max()))
        right = lung & (x_world > mid)
    left = lung & ~right
    _split_by_height(left, LEFT_LOBES, organs)
    _split_by_height(right, RIGHT_LOBES, organs)
    if esophagus:
        try:
            eso = derive_esophagus(hu, affine, body=body, lung=lung, aorta=aorta)
        except ValueError as exc:
            log.info("no oesophagus derived: %s", exc)
        else:
            organs[eso & (organs == 0)] = ESOPHAGUS_ID
    return organs, body.astype(np.uint8)
