"""The thoracic oesophagus derived from a chest CT, as TotalSegmentator v2 ``esophagus`` (id 15).

No offline source ships an oesophagus label (TotalSegmentator's example maps have 0 voxels of it),
yet ``esophageal_cancer`` needs one. This module derives it from HU and anatomy. It is a
model-based delineation, not a manual one; its limits are stated below and in every case's notes.

Anatomy used (sizes in mm, so the result does not depend on the voxel size):

1. **Spine.** In each axial slice the spinal canal is a hole of CSF-like HU (-20..90, 80-500 mm^2)
   enclosed by bone (> 200 HU, closed by 2 mm), in the posterior half of the body near its midline.
   It is found in a fraction of the slices (the bony ring is not closed at every level), so its
   ``x`` and ``y`` are fitted along ``z`` with robust polynomials (outliers dropped). From the
   canal, a 6 mm wide ray goes anteriorly through the vertebral body (smoothed HU >= 100, gaps up
   to 2.5 mm); where it ends is the body's anterior edge ``y_front``, kept if the body is 18-50 mm
   deep and fitted along ``z`` the same way.
2. **Compatible tissue** (on HU smoothed by a 1 mm Gaussian in-plane). Oesophageal wall is soft tissue (-80..130 HU) and its lumen may hold a
   small air pocket (< 150 mm^2 per slice, not lung): both count. Lung, fat, bone and anything
   within 2 mm of a voxel above 150 HU (contrast-filled vessels, bone) do not; nor does the aorta:
   given as a mask, or (non-contrast CT) found as a round soft-tissue tube of inscribed radius
   8.5-16 mm beside and left of the vertebral body, kept where it agrees with its neighbours in
   ``z`` (within 5 mm of their running median), and excluded with a 1.5 mm margin.
3. **Centre line.** Over the slices from the thoracic inlet (both lungs at >= 30 % of their
   largest cross-section) down to the lowest slice where the lungs are still >= 85 % of it, a
   dynamic programme picks one centre per slice minimising
   ``4 * (1 - compatible fraction in a 3.5 mm disc) + ((dy - 8) / 8)^2 + ((dx + 5) / 15)^2``
   ``- 1.5`` where the disc holds a small air pocket (luminal air is the oesophagus's signature)
   (``dy`` mm anterior of ``y_front``, ``dx`` mm right of the canal) plus
   ``0.15 * step^2`` between slices, with steps of at most ``2 + 0.8 * slice thickness`` mm and
   centres confined to 14 mm behind to 25 mm in front of the vertebral body. The result is a tube
   that hugs the front of the spine, behind the trachea and the left atrium, right of the
   descending aorta: where the oesophagus runs in the upper and middle thorax.
4. **Mask.** In each slice, the compatible voxels connected to the centre inside an ellipse of
   9 mm (left-right) by 7 mm (front-back) semi-axes, holes filled; a slice whose region is smaller
   than a 4 mm disc gets the compatible part of that disc instead.

**Limits.** Only the thoracic oesophagus above the diaphragm is labelled: the cervical part and the
last few centimetres, where the oesophagus crosses in front of the descending aorta to the hiatus,
are left out, because there a spine-relative prior is wrong (checked on the chest CTA, whose aorta
mask shows the crossing). The cross-section is bounded by the ellipse, so a dilated oesophagus is
under-segmented. Validated by eye on all four fetched chest CTs (``docs/esophagus.png``, drawn by
``packages/bench/scripts/esophagus_figure.py``) and by the
anatomical checks in the tests, not against a manual label (none exists offline).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: TotalSegmentator v2 id of the oesophagus.
ESOPHAGUS_ID = 15

SOFT_HU = (-80.0, 130.0)
SMOOTH_MM = 1.0
BRIGHT_HU = 150.0
BRIGHT_MARGIN_MM = 2.0
AIR_POCKET_HU = -300.0
AIR_POCKET_MAX_MM2 = 150.0
DISC_MM = 3.5
TARGET_FRONT_MM = 8.0
AIR_BONUS = 1.5
PRIOR_Y_MM = 8.0
PRIOR_X_MM = 15.0
LEFT_SHIFT_MM = 5.0
STEP_WEIGHT = 0.15
ROI_X_MM = (-40.0, 25.0)
ROI_Y_MM = (-14.0, 25.0)
ELLIPSE_MM = (9.0, 7.0)
MIN_DISC_MM = 4.0
TOP_LUNG_FRACTION = 0.30
BOTTOM_LUNG_FRACTION = 0.85
AORTA_X_MM = (-45.0, 0.0)
AORTA_Y_MM = (-20.0, 15.0)
AORTA_RADIUS_MM = (8.5, 16.0)


@dataclass(frozen=True)
class SpineTrack:
    """Per axial slice (voxel indices, NaN-free after fitting): canal centre and body front."""

    canal_x: np.ndarray
    canal_y: np.ndarray
    front_y: np.ndarray
    found: np.ndarray  # bool: slices where the canal was seen directly


def _spacing(affine: np.ndarray) -> np.ndarray:
    return np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))


def _robust_fit(z: np.ndarray, v: np.ndarray, *, degree: int, tol: float) -> np.ndarray:
    """Polynomial fit of ``v(z)`` (NaN = missing) with iterative outlier rejection."""
    ok = np.isfinite(v)
    if ok.sum() < degree + 2:
        raise ValueError(f"only {int(ok.sum())} slices with a usable spine landmark")
    zn = (z - z.mean()) / (z.std() + 1e-9)
    zo, vo = zn[ok], v[ok]
    keep = np.ones(vo.size, dtype=bool)
    coef = np.polyfit(zo, vo, degree)
    for _ in range(8):
        coef = np.polyfit(zo[keep], vo[keep], degree)
        res = np.abs(np.polyval(coef, zo) - vo)
        new = res < max(tol, 2.5 * float(np.median(res[keep])))
        if new.sum() < degree + 2 or (new == keep).all():
            break
        keep = new
    return np.polyval(coef, zn)


def _find_canal(hu, body, sp, exclude):
    nz = hu.shape[2]
    cx = np.full(nz, np.nan)
    cy = np.full(nz, np.nan)
    cross = ndimage.generate_binary_structure(2, 1)
    it = max(1, int(round(2.0 / sp[0])))
    for k in range(nz):
        b = body[:, :, k]
        if b.sum() < 100:
            continue
        xs, ys = np.nonzero(b)
        xc = xs.mean()
        ymid = ys.min() + 0.5 * (ys.max() - ys.min())
        bone = (hu[:, :, k] > 200) & b
        if exclude is not None:
            bone &= ~exclude[:, :, k]
        closed = ndimage.binary_closing(bone, cross, iterations=it)
        holes = ndimage.binary_fill_holes(closed) & ~closed
        lab, n = ndimage.label(holes)
        if n == 0:
            continue
        idx = np.arange(1, n + 1)
        area = ndimage.sum_labels(holes, lab, idx) * sp[0] * sp[1]
        mean = np.asarray(ndimage.mean(hu[:, :, k], lab, idx))
        com = np.array(ndimage.center_of_mass(holes, lab, idx)).reshape(-1, 2)
        ok = (
            (area > 80) & (area < 500) & (mean > -20) & (mean < 90)
            & (np.abs(com[:, 0] - xc) * sp[0] < 40) & (com[:, 1] < ymid)
        )
        if ok.any():
            cand = np.nonzero(ok)[0]
            j = cand[np.argmin(com[cand, 1])]  # the vertebral body's own interior lies in front
            cx[k], cy[k] = com[j]
    return cx, cy


def spine_track(
    hu: np.ndarray, body: np.ndarray, spacing, *, exclude: np.ndarray | None = None
) -> SpineTrack:
    """Spinal canal and vertebral-body front per axial slice (step 1 of the module description).

    Raises:
        ValueError: the spine could not be found in enough slices (not a chest/abdomen CT).
    """
    sp = np.asarray(spacing, dtype=float)
    nx, ny, nz = hu.shape
    cx, cy = _find_canal(hu, body, sp, exclude)
    found = np.isfinite(cx)
    if found.sum() < 5:
        raise ValueError(f"spinal canal found in only {int(found.sum())} slices")
    z = np.arange(nz, dtype=float) * sp[2]
    far = np.abs(cx - np.nanmedian(cx)) * sp[0] > 15.0
    cx[far] = np.nan
    cy[far] = np.nan
    canal_x = _robust_fit(z, cx * sp[0], degree=2, tol=4.0) / sp[0]
    canal_y = _robust_fit(z, cy * sp[1], degree=3, tol=6.0) / sp[1]
    half = int(3.0 / sp[0])
    front = np.full(nz, np.nan)
    for k in range(nz):
        x0, y0 = int(round(canal_x[k])), int(round(canal_y[k]))
        if not (0 <= x0 < nx and 0 <= y0 < ny):
            continue
        band = hu[max(0, x0 - half): x0 + half + 1, :, k]
        if exclude is not None:
            band = np.where(exclude[max(0, x0 - half): x0 + half + 1, :, k], -1000.0, band)
        prof = ndimage.gaussian_filter1d(np.median(band, axis=0), 1.0 / sp[1])
        y = y0
        while y < ny - 1 and prof[y] < 110 and (y - y0) * sp[1] < 15:
            y += 1  # leave the canal
        start, gap, last = y, 0, None
        while y < ny - 1 and (y - start) * sp[1] < 50:
            if prof[y] >= 100:
                gap, last = 0, y
            else:
                gap += 1
                if gap * sp[1] > 2.5:
                    break
            y += 1
        if last is not None and 18.0 <= (last - y0) * sp[1] <= 50.0:
            front[k] = last
    front_y = _robust_fit(z, front * sp[1], degree=3, tol=5.0) / sp[1]
    return SpineTrack(canal_x=canal_x, canal_y=canal_y, front_y=front_y, found=found)


def _compatible(hu, body, lung, sp, aorta):
    # Smoothed in-plane by a 1 mm Gaussian first, so that thin-slice noise (RIDER: about 40 HU per
    # voxel) does not break soft tissue into speckle.
    hu = ndimage.gaussian_filter(np.asarray(hu, dtype=np.float32), (SMOOTH_MM / sp[0], SMOOTH_MM / sp[1], 0))
    radius = max(1, int(round(BRIGHT_MARGIN_MM / sp[0])))
    bright = np.empty(hu.shape, dtype=bool)
    cross = ndimage.generate_binary_structure(2, 1)
    for k in range(hu.shape[2]):
        bright[:, :, k] = ndimage.binary_dilation(hu[:, :, k] > BRIGHT_HU, cross, iterations=radius)
    ok = (hu > SOFT_HU[0]) & (hu < SOFT_HU[1]) & body & ~lung & ~bright
    air = (hu < AIR_POCKET_HU) & body & ~lung
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[:, :, 1] = cross
    lab, n = ndimage.label(air, structure=in_plane)
    if n:
        area = ndimage.sum_labels(air, lab, np.arange(1, n + 1)) * sp[0] * sp[1]
        pockets = np.concatenate([[False], area < AIR_POCKET_MAX_MM2])[lab]
    else:
        pockets = np.zeros(hu.shape, dtype=bool)
    ok |= pockets
    if aorta is not None:
        ok &= ~ndimage.binary_dilation(aorta, in_plane, iterations=1)
    return ok, pockets


def _round_vessel(ok, spine: SpineTrack, sp, ks):
    """Non-contrast descending aorta: a round soft-tissue tube (inscribed radius >= 8.5 mm) left of
    and beside the vertebral body, followed along ``z``. Returns a mask (bool, shape of ``ok``)."""
    out = np.zeros(ok.shape, dtype=bool)
    nx, ny, _ = ok.shape
    xx = (np.arange(nx) * sp[0])[:, None]
    yy = (np.arange(ny) * sp[1])[None, :]
    found = {}
    for k in ks:
        dx = xx - spine.canal_x[k] * sp[0]
        dy = yy - spine.front_y[k] * sp[1]
        roi = (dx > AORTA_X_MM[0]) & (dx < AORTA_X_MM[1]) & (dy > AORTA_Y_MM[0]) & (dy < AORTA_Y_MM[1])
        edt = ndimage.distance_transform_edt(ok[:, :, k], sampling=sp[:2])
        edt = np.where(roi, edt, 0.0)
        i, j = np.unravel_index(int(np.argmax(edt)), edt.shape)
        r = float(edt[i, j])
        # A maximum on the search box's edge belongs to something bigger outside it (the heart).
        on_edge = (
            min(dx[i, 0] - AORTA_X_MM[0], AORTA_X_MM[1] - dx[i, 0]) < 2.0
            or min(dy[0, j] - AORTA_Y_MM[0], AORTA_Y_MM[1] - dy[0, j]) < 2.0
        )
        if AORTA_RADIUS_MM[0] <= r <= AORTA_RADIUS_MM[1] and not on_edge:
            found[int(k)] = (i, j, r)
    if len(found) < 5:
        return out
    kz = np.array(sorted(found))
    ci = np.array([found[k][0] for k in kz], dtype=float)
    cj = np.array([found[k][1] for k in kz], dtype=float)
    win = max(3, int(round(15.0 / sp[2])) | 1)
    mi = ndimage.median_filter(ci, size=win, mode="nearest")
    mj = ndimage.median_filter(cj, size=win, mode="nearest")
    for n, k in enumerate(kz):
        if np.hypot((ci[n] - mi[n]) * sp[0], (cj[n] - mj[n]) * sp[1]) > 5.0:
            continue  # not on the tube followed by its neighbours
        i, j, r = found[k]
        disc = ((xx - i * sp[0]) ** 2 + (yy - j * sp[1]) ** 2) <= (r + 1.5) ** 2
        out[:, :, k] = disc
    return out


def _disc(radius_mm, sp):
    rx, ry = int(np.ceil(radius_mm / sp[0])), int(np.ceil(radius_mm / sp[1]))
    gx, gy = np.mgrid[-rx: rx + 1, -ry: ry + 1]
    return ((gx * sp[0]) ** 2 + (gy * sp[1]) ** 2) <= radius_mm**2


def _track(ok, pockets, spine: SpineTrack, sp, ks):
    """Dynamic programme over the slices ``ks`` (superior -> inferior) within a fixed x/y box."""
    nx, ny, _ = ok.shape
    fx, fy = spine.canal_x[ks] * sp[0], spine.front_y[ks] * sp[1]
    x0 = max(0, int(np.floor((fx.min() + ROI_X_MM[0]) / sp[0])))
    x1 = min(nx, int(np.ceil((fx.max() + ROI_X_MM[1]) / sp[0])) + 1)
    y0 = max(0, int(np.floor((fy.min() + ROI_Y_MM[0]) / sp[1])))
    y1 = min(ny, int(np.ceil((fy.max() + ROI_Y_MM[1]) / sp[1])) + 1)
    if x1 - x0 < 3 or y1 - y0 < 3:
        raise ValueError("the search region in front of the spine is outside the image")
    disc = _disc(DISC_MM, sp).astype(np.float32)
    disc /= disc.sum()
    xx = (np.arange(x0, x1) * sp[0])[:, None]
    yy = (np.arange(y0, y1) * sp[1])[None, :]
    dmax = 2.0 + 0.8 * sp[2]
    rx, ry = int(dmax / sp[0]), int(dmax / sp[1])
    offsets = [
        (ox, oy, STEP_WEIGHT * ((ox * sp[0]) ** 2 + (oy * sp[1]) ** 2))
        for ox in range(-rx, rx + 1)
        for oy in range(-ry, ry + 1)
        if (ox * sp[0]) ** 2 + (oy * sp[1]) ** 2 <= dmax**2
    ]
    w, h = x1 - x0, y1 - y0
    acc = None
    back = []
    for k in ks:
        sl = ok[x0:x1, y0:y1, k]
        frac = ndimage.convolve(sl.astype(np.float32), disc, mode="constant")
        dx = xx - spine.canal_x[k] * sp[0]
        dy = yy - spine.front_y[k] * sp[1]
        prior = ((dy - TARGET_FRONT_MM) / PRIOR_Y_MM) ** 2 + ((dx + LEFT_SHIFT_MM) / PRIOR_X_MM) ** 2
        inside = (dx > ROI_X_MM[0]) & (dx < ROI_X_MM[1]) & (dy > ROI_Y_MM[0]) & (dy < ROI_Y_MM[1])
        air = ndimage.convolve(pockets[x0:x1, y0:y1, k].astype(np.float32), disc, mode="constant") > 0
        local = 4.0 * (1.0 - frac) + prior - AIR_BONUS * air + np.where(inside & sl, 0.0, 1e3)
        if acc is None:
            acc = local
            back.append(None)
            continue
        best = np.full((w, h), np.inf)
        arg = np.zeros((w, h), dtype=np.int32)
        for i, (ox, oy, cost) in enumerate(offsets):
            shifted = np.full((w, h), np.inf)
            # shifted[x, y] = acc[x + ox, y + oy]
            shifted[max(0, -ox): w - max(0, ox), max(0, -oy): h - max(0, oy)] = acc[
                max(0, ox): w - max(0, -ox), max(0, oy): h - max(0, -oy)
            ]
            cand = shifted + cost
            better = cand < best
            best[better] = cand[better]
            arg[better] = i
        back.append(arg)
        acc = best + local
    i, j = np.unravel_index(int(np.argmin(acc)), acc.shape)
    centres = {}
    for n in range(len(ks) - 1, -1, -1):
        centres[int(ks[n])] = (i + x0, j + y0)
        if back[n] is not None:
            ox, oy, _ = offsets[int(back[n][i, j])]
            i, j = i + ox, j + oy
    return centres


def _slice_mask(ok_slice, centre, sp):
    ax, ay = ELLIPSE_MM
    nx, ny = ok_slice.shape
    xs = (np.arange(nx) - centre[0])[:, None] * sp[0]
    ys = (np.arange(ny) - centre[1])[None, :] * sp[1]
    ellipse = (xs / ax) ** 2 + (ys / ay) ** 2 <= 1.0
    region = ok_slice & ellipse
    lab, _ = ndimage.label(region)
    own = lab[centre] if region[centre] else 0
    mask = ndimage.binary_fill_holes(lab == own) if own else np.zeros_like(region)
    disc = (xs**2 + ys**2) <= MIN_DISC_MM**2
    if mask.sum() * sp[0] * sp[1] < np.pi * MIN_DISC_MM**2:
        mask = ok_slice & disc
    return mask


def derive_esophagus(
    hu: np.ndarray,
    affine: np.ndarray,
    *,
    body: np.ndarray,
    lung: np.ndarray,
    aorta: np.ndarray | None = None,
) -> np.ndarray:
    """Thoracic oesophagus mask (bool, shape of ``hu``); see the module description.

    Args:
        hu: chest CT in HU, RAS axis order (``+x`` patient's right, ``+y`` anterior, ``+z`` up).
        affine: its 4x4 affine (only the voxel size is used).
        body: body mask; lung: both lungs (any lobe ids), same shape.
        aorta: optional aorta mask; the oesophagus never enters it.

    Raises:
        ValueError: no lungs, or the spine cannot be followed (not a chest CT).
    """
    sp = _spacing(affine)
    body = np.asarray(body, dtype=bool)
    lung = np.asarray(lung, dtype=bool)
    area = lung.sum(axis=(0, 1)).astype(float)
    if area.max() == 0:
        raise ValueError("no lung voxels: the oesophagus is derived on chest CTs only")
    spine = spine_track(hu, body, sp, exclude=aorta)
    top = int(np.nonzero(area >= TOP_LUNG_FRACTION * area.max())[0].max())
    bottom = int(np.nonzero(area >= BOTTOM_LUNG_FRACTION * area.max())[0].min())
    if top - bottom < 2:
        raise ValueError("the CT covers too little of the thorax to follow the oesophagus")
    ok, pockets = _compatible(hu, body, lung, sp, aorta)
    ks = np.arange(top, bottom - 1, -1)
    if aorta is None:
        ok &= ~_round_vessel(ok, spine, sp, ks)
    centres = _track(ok, pockets, spine, sp, ks)
    out = np.zeros(hu.shape, dtype=bool)
    for k, c in centres.items():
        out[:, :, k] = _slice_mask(ok[:, :, k], c, sp)
    return out
