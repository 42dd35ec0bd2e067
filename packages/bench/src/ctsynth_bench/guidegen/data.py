"""The GuideGen demo set: real templates, smoothly deformed and scaled, with prompted tumours.

Every case is made from one real template (the bundled abdomen and chest, and fetched cases with
organ maps when present) by

1. a random isotropic scaling (0.9-1.1), a shift (up to 12 mm) and a smooth random displacement
   field (control points every ~64 mm, std 6 mm), applied to CT and organ map together;
2. resampling onto the demo's fixed world grids, centred on the body: the label map at
   ``LABEL_GRID`` voxels of ``LABEL_SPACING`` mm (16^3 x 24 mm = a 384 mm cube) and the CT at
   twice that resolution (32^3 x 12 mm). Labels are the plurality class of the 2x2x2 finer voxels;
   the CT is Gaussian-smoothed before sampling (anti-aliasing);
3. GuideGen's classes (``ctsynth_bench.data.to_guidegen``, the one documented table);
4. tumours placed where the prompt says by a rule-based placer: ``count`` separate ellipsoids
   (diameter 24-36 mm if ``small``, 44-64 mm if ``large``; at 24 mm voxels a smaller tumour would
   vanish, aspect 0.8-1.25) centred in the site's
   organ and kept inside it or on its rim (the organ dilated by one voxel), with at least one voxel
   between tumours so they stay separate components (26-connectivity). In the CT they are
   rendered hypodense (organ median - 45 HU, smooth texture, soft edge). A template's own real
   tumour (the chest's) is labelled tumour and counts as one of the ``count``.

The prompt is drawn first (:func:`~.prompts.sample_fields`) for the template's sites; the realised
count and size are what is stored (if a tumour cannot be placed the count is lowered), so every
stored field is true of its label map. Case ``i`` depends only on ``(seed, i)``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from ._labels import NUM_CLASSES, TUMOUR, class_id, map_organs
from .prompts import COUNTS, SITES, T_FOR_SIZE, PromptFields, sample_fields

__all__ = [
    "CT_GRID",
    "CT_SPACING",
    "LABEL_GRID",
    "LABEL_SPACING",
    "DemoCase",
    "GGTemplate",
    "grid_affine",
    "load_gg_templates",
    "make_case",
    "tumour_components",
]

log = logging.getLogger(__name__)

LABEL_GRID = 16
LABEL_SPACING = 24.0
CT_GRID = 32
CT_SPACING = 12.0
AIR_HU = -1024.0
_STRUCT26 = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class GGTemplate:
    """A real CT with its organ map, in GuideGen classes.

    Attributes:
        name: template name.
        ct: float32 (X, Y, Z) HU (RAS).
        labels: uint8 (X, Y, Z) GuideGen ids (tumour = 20 where the template has a real tumour).
        affine: 4x4 voxel-to-RAS affine.
        centre: body centre in RAS mm.
        sites: the prompt sites this template can hold.
    """

    name: str
    ct: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    centre: np.ndarray
    sites: tuple[str, ...]


@dataclass(frozen=True)
class DemoCase:
    """One demo case.

    Attributes:
        labels: uint8 (16, 16, 16) GuideGen ids on the label grid.
        ct: float32 (32, 32, 32) HU on the CT grid (same field of view), or None.
        fields: the prompt fields, true of ``labels``.
        template: source template name.
    """

    labels: np.ndarray
    ct: np.ndarray | None
    fields: PromptFields
    template: str


def grid_affine(n: int, spacing: float) -> np.ndarray:
    """RAS affine of the demo grid: ``n`` voxels of ``spacing`` mm, centred on the world origin."""
    a = np.diag([spacing, spacing, spacing, 1.0])
    a[:3, 3] = -spacing * (n - 1) / 2.0
    return a


#: Templates already read in this process, by the names asked for and the case files behind
#: them (path and modification time), so a changed or newly fetched case is read again.
_TEMPLATES: dict[tuple, tuple[GGTemplate, ...]] = {}


def load_gg_templates(names: Sequence[str] | None = None) -> list[GGTemplate]:
    """Load the real templates (bundled + fetched cases that have an organ map).

    Each set is read once per process; the arrays of the templates returned are read-only, as
    they are shared between calls.
    """
    from .. import data

    infos = data.list_cases()
    key = (
        None if names is None else tuple(names),
        tuple(
            (i.name, str(i.path), (i.path / "ct.nii.gz").stat().st_mtime_ns, i.has_organs)
            for i in infos
        ),
    )
    if key not in _TEMPLATES:
        templates = _read_templates(infos, names)
        for t in templates:
            for a in (t.ct, t.labels, t.affine, t.centre):
                a.setflags(write=False)
        _TEMPLATES[key] = tuple(templates)
    return list(_TEMPLATES[key])


def _read_templates(infos: Sequence[Any], names: Sequence[str] | None) -> list[GGTemplate]:
    from .. import data

    if names is None:
        names = list(
            dict.fromkeys(i.name for i in infos if i.has_organs)
        )  # fetched first, no repeats
    out = []
    for name in names:
        case = data.load_case(name)
        if case.organs is None:
            continue
        lesion = None if case.lesion is None else np.asarray(case.lesion) > 0
        labels = map_organs(np.asarray(case.organs), lesion)
        ct = np.asarray(case.ct, dtype=np.float32)
        affine = np.asarray(case.affine, dtype=np.float64)
        body = np.argwhere(ct > -500)
        centre = (affine @ np.r_[body.mean(axis=0), 1.0])[:3]
        present = set(np.unique(labels).tolist())
        sites = tuple(
            s
            for s, organ in SITES.items()
            if class_id(organ) in present
            and int((labels == class_id(organ)).sum()) * float(np.prod(case.spacing)) > 120_000
        )
        if not sites:
            log.info("template %s has no organ of the demo sites; skipped", name)
            continue
        out.append(
            GGTemplate(
                name=case.name, ct=ct, labels=labels, affine=affine, centre=centre, sites=sites
            )
        )
    if not out:
        raise ValueError("no template with an organ map of a demo site is available")
    return out


def _smooth_field(rng: np.random.Generator, n: int, amp_mm: float, ctrl: int = 7) -> np.ndarray:
    c = rng.normal(0.0, amp_mm, size=(3, ctrl, ctrl, ctrl))
    return np.stack(
        [ndimage.zoom(c[i], n / ctrl, order=3, mode="nearest", grid_mode=True) for i in range(3)]
    )


def _resample(
    t: GGTemplate, rng: np.random.Generator, with_ct: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    n = CT_GRID
    scale = rng.uniform(0.9, 1.1)
    shift = rng.uniform(-12.0, 12.0, size=3)
    idx = np.indices((n, n, n), dtype=np.float64).reshape(3, -1)
    world = grid_affine(n, CT_SPACING)[:3, :3] @ idx + grid_affine(n, CT_SPACING)[:3, 3:4]
    field = _smooth_field(rng, n, 6.0, ctrl=6).reshape(3, -1)
    world = (world + field) / scale + (t.centre + shift)[:, None]
    inv = np.linalg.inv(t.affine)
    vox = (inv[:3, :3] @ world + inv[:3, 3:4]).reshape(3, n, n, n)
    fine = ndimage.map_coordinates(t.labels, vox, order=0, mode="constant", cval=0, prefilter=False)
    # plurality of the 2x2x2 fine voxels -> label grid
    k = n // LABEL_GRID
    blocks = fine.reshape(LABEL_GRID, k, LABEL_GRID, k, LABEL_GRID, k).transpose(0, 2, 4, 1, 3, 5)
    blocks = blocks.reshape(LABEL_GRID, LABEL_GRID, LABEL_GRID, k**3)
    counts = np.stack([(blocks == c).sum(-1) for c in range(NUM_CLASSES)], axis=-1)
    counts[..., 0] = counts[..., 0] - 1  # ties go to the organ
    labels = counts.argmax(-1).astype(np.uint8)
    ct = None
    if with_ct:
        tsp = np.sqrt((t.affine[:3, :3] ** 2).sum(0))
        sigma = np.maximum(0.0, 0.4 * (CT_SPACING / scale) / tsp - 0.3)
        src = ndimage.gaussian_filter(t.ct, sigma) if np.any(sigma > 0) else t.ct
        ct = ndimage.map_coordinates(
            src, vox, order=1, mode="constant", cval=AIR_HU, prefilter=False
        )
        ct = ct.astype(np.float32)
    return labels, ct


def _ellipsoid(
    centre: np.ndarray, radii: np.ndarray, rot: np.ndarray, shape: tuple[int, ...]
) -> np.ndarray:
    """Voxels whose 3x3x3 sub-samples are at least half inside the ellipsoid (voxel units)."""
    lo = np.maximum(0, np.floor(centre - radii.max() - 1)).astype(int)
    hi = np.minimum(shape, np.ceil(centre + radii.max() + 2)).astype(int)
    sub = (np.arange(3) - 1) / 3.0
    g = np.stack(
        np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij"), -1
    )
    offs = np.stack(np.meshgrid(sub, sub, sub, indexing="ij"), -1).reshape(-1, 3)
    p = g[..., None, :] + offs - centre  # (..., 27, 3)
    q = p @ rot
    inside = ((q / radii) ** 2).sum(-1) <= 1.0
    frac = inside.mean(-1)
    out = np.zeros(shape, dtype=bool)
    out[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = frac >= 0.5
    c = np.clip(np.round(centre).astype(int), 0, np.array(shape) - 1)
    out[tuple(c)] = True
    return out


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def tumour_components(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected tumour components (26-connectivity): ``(component ids, count)``."""
    comp, k = ndimage.label(labels == TUMOUR, structure=_STRUCT26)
    return comp, int(k)


def _place(labels: np.ndarray, organ: int, size: str, count: int, rng: np.random.Generator) -> int:
    """Place up to ``count`` separate tumours in/on ``organ``; returns how many were placed."""
    region = labels == organ
    rim = ndimage.binary_dilation(region, structure=_STRUCT26)
    core = ndimage.binary_erosion(region) if ndimage.binary_erosion(region).sum() >= 4 else region
    placed = 0
    for _ in range(count):
        for _attempt in range(40):
            cands = np.argwhere(core & (labels != TUMOUR))
            if len(cands) == 0:
                return placed
            c = cands[rng.integers(len(cands))] + rng.uniform(-0.3, 0.3, size=3)
            d_mm = rng.uniform(24, 36) if size == "small" else rng.uniform(44, 64)
            radii = d_mm / 2 / LABEL_SPACING * rng.uniform(0.8, 1.25, size=3)
            radii = radii * (d_mm / 2 / LABEL_SPACING) / np.cbrt(np.prod(radii))
            blob = _ellipsoid(c, radii, _rotation(rng), labels.shape) & rim
            near = ndimage.binary_dilation(labels == TUMOUR, structure=_STRUCT26)
            if blob.any() and not (blob & near).any():
                labels[blob] = TUMOUR
                placed += 1
                break
        else:
            return placed
    return placed


def _render_tumours(
    ct: np.ndarray, fine_tumour: np.ndarray, fine_labels: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Hypodense tumours in the CT grid: organ median - 45 HU, smooth texture, soft edge."""
    if not fine_tumour.any():
        return ct
    soft = ndimage.gaussian_filter(fine_tumour.astype(np.float32), 0.7)
    organ_vox = ct[
        ndimage.binary_dilation(fine_tumour, iterations=2) & ~fine_tumour & (fine_labels > 0)
    ]
    ref = float(np.median(organ_vox)) if organ_vox.size else 40.0
    target = (
        ref
        - 45.0
        + 12.0 * ndimage.gaussian_filter(rng.normal(size=ct.shape).astype(np.float32), 1.0) * 3
    )
    return (ct * (1 - soft) + target * soft).astype(np.float32)


def make_case(
    templates: Sequence[GGTemplate],
    seed: int,
    index: int,
    *,
    with_ct: bool = True,
    site: str | None = None,
    count: int | None = None,
    size: str | None = None,
) -> DemoCase:
    """Case ``index`` of the demo set with ``seed`` (deterministic in both).

    Args:
        templates: from :func:`load_gg_templates`.
        seed: dataset seed.
        index: case index.
        with_ct: also make the CT (32^3, 12 mm).
        site, count, size: fix these prompt fields (others drawn).

    Returns:
        A :class:`DemoCase` whose fields are true of its label map.
    """
    rng = np.random.default_rng([seed, index])
    if site is None:
        # each site equally often; then a template that has it
        site = str(rng.choice(sorted({s for t in templates for s in t.sites})))
    fitting = [t for t in templates if site in t.sites]
    if not fitting:
        raise ValueError(
            f"no template holds site {site!r}; templates: {[t.name for t in templates]}"
        )
    t = fitting[int(rng.integers(len(fitting)))]
    fields = sample_fields(rng, site=site, count=count, size=size)
    labels, ct = _resample(t, rng, with_ct)
    organ = class_id(SITES[site])
    own = tumour_components(labels)[1]
    if own and site != "lung":
        labels[labels == TUMOUR] = class_id("lung")  # the chest's own tumour is a lung tumour
        own = 0
    placed = own + _place(labels, organ, fields.size, max(0, fields.count - own), rng)
    if placed == 0:
        raise ValueError(f"could not place a tumour in {site} of template {t.name}")
    d = fields.to_dict()
    d["count"] = tumour_components(labels)[1]
    if d["count"] not in COUNTS[site]:
        raise ValueError(f"case {index}: realised {d['count']} tumours, not allowed for {site}")
    if d["t"] not in T_FOR_SIZE[d["size"]]:
        d["t"] = T_FOR_SIZE[d["size"]][0]
    fields = PromptFields.from_dict(d)
    if ct is not None:
        fine_lab = np.repeat(np.repeat(np.repeat(labels, 2, 0), 2, 1), 2, 2)
        ct = _render_tumours(ct, fine_lab == TUMOUR, fine_lab, rng)
    return DemoCase(labels=labels, ct=ct, fields=fields, template=t.name)


_WORKER_TEMPLATES: list[GGTemplate] = []


def _init_worker(names: list[str] | None) -> None:
    _WORKER_TEMPLATES[:] = load_gg_templates(names)


def _case_arrays(job: tuple[int, int, bool]) -> tuple[np.ndarray, np.ndarray | None, str, str]:
    import json

    seed, i, with_ct = job
    c = make_case(_WORKER_TEMPLATES, seed, i, with_ct=with_ct)
    ct = None if c.ct is None else np.clip(np.round(c.ct), -1024, 3071).astype(np.int16)
    return c.labels, ct, json.dumps(c.fields.to_dict()), c.template


def build_demo_set(
    path: str | Path,
    *,
    n: int,
    seed: int,
    with_ct: bool,
    workers: int = 1,
    templates: Sequence[str] | None = None,
    start: int = 0,
) -> Path:
    """Make cases ``start .. start+n-1`` and write them as one compressed ``.npz``.

    Arrays: ``labels`` uint8 (n, 16, 16, 16), ``ct`` int16 (n, 32, 32, 32) HU when ``with_ct``,
    ``fields`` (JSON of the prompt fields per case), ``template`` (names).
    """
    jobs = [(seed, i, with_ct) for i in range(start, start + n)]
    names = list(templates) if templates is not None else None
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(
            workers, initializer=_init_worker, initargs=(names,)
        ) as pool:
            rows = pool.map(_case_arrays, jobs, chunksize=8)
    else:
        _init_worker(names)
        rows = [_case_arrays(j) for j in jobs]
    arrays = {
        "labels": np.stack([r[0] for r in rows]),
        "fields": np.array([r[2] for r in rows]),
        "template": np.array([r[3] for r in rows]),
    }
    if with_ct:
        arrays["ct"] = np.stack([r[1] for r in rows])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)
    return path
