"""Does GuideGen follow its prompt? Site, count, text-removed, sampler and image checks.

* **Site**, two rules. *Touch* (the issue's "in or on"): a sample hits when it has a tumour and
  every tumour component touches the prompted organ (its voxels or their 26-neighbours). At 24 mm
  voxels a tumour often touches two organs, so this rule is lenient. *Dominant*: every component's
  site is the organ class that fills most of its one-voxel shell (background and tumour left out),
  and it must be the prompted organ; a component has one site, so chance is near one in five.
  Chance levels are measured, not assumed: the same rules on samples drawn with the text removed
  (the null prompt), for each site.
* **Count**: the number of connected tumour components (26-connectivity) equals the prompt's;
  the confusion table (prompted count x generated count) shows where it fails.
* **Size**: voxels per tumour component for ``small`` and ``large`` prompts, and how often a
  ``large`` sample's tumours are bigger than a ``small`` one's (0.5 = the size is ignored).
* **Sampler**: the fast sampler against the ancestral one, by site and count accuracy, the
  distance of the class-volume histogram to the real maps', and network calls.
* **Image**: median HU of each organ in the generated CT against real ranges.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ._labels import GUIDEGEN_CLASSES, NUM_CLASSES, TUMOUR, class_id
from .prompts import SITES, PromptFields

__all__ = [
    "HU_RANGES",
    "SiteCount",
    "class_histogram_distance",
    "count_confusion",
    "count_correlation",
    "null_site_rates",
    "organ_hu",
    "score_maps",
    "site_dominant",
    "site_hits",
    "size_order",
    "tumour_count",
    "tumour_sites",
]

_S26 = np.ones((3, 3, 3), dtype=bool)

#: Real HU ranges of organ medians (contrast-enhanced and plain CT, smoothed to the demo grid).
HU_RANGES: dict[str, tuple[float, float]] = {
    "lung": (-1000.0, -500.0),
    "liver": (0.0, 150.0),
    "spleen": (0.0, 150.0),
    "kidney": (0.0, 250.0),
    "vertebrae": (80.0, 1000.0),
    "aorta": (-20.0, 400.0),
    "urinary_bladder": (-20.0, 80.0),
}


def tumour_count(labels: np.ndarray) -> int:
    """Connected tumour components (26-connectivity) of one map ``(X, Y, Z)``."""
    return int(ndimage.label(labels == TUMOUR, structure=_S26)[1])


def site_hits(labels: np.ndarray, site: str) -> bool:
    """True when the map has a tumour and every component is in or on the site's organ."""
    comp, k = ndimage.label(labels == TUMOUR, structure=_S26)
    if k == 0:
        return False
    organ = ndimage.binary_dilation(labels == class_id(SITES[site]), structure=_S26)
    touched = np.unique(comp[organ & (comp > 0)])
    return len(touched) == k


def tumour_sites(labels: np.ndarray) -> list[str]:
    """Dominant organ of each tumour component (the class filling most of its one-voxel shell)."""
    comp, k = ndimage.label(labels == TUMOUR, structure=_S26)
    out = []
    for i in range(1, k + 1):
        blob = comp == i
        shell = ndimage.binary_dilation(blob, structure=_S26) & ~blob
        vals = labels[shell]
        vals = vals[(vals != 0) & (vals != TUMOUR)]
        out.append(GUIDEGEN_CLASSES[int(np.bincount(vals).argmax())] if vals.size else "background")
    return out


def site_dominant(labels: np.ndarray, site: str) -> bool:
    """True when the map has a tumour and every component's dominant organ is the site's organ."""
    sites = tumour_sites(labels)
    return bool(sites) and all(s == SITES[site] for s in sites)


def class_histogram_distance(maps: np.ndarray, real: np.ndarray) -> float:
    """Total-variation distance between the mean class-volume fractions of two map sets."""

    def hist(m: np.ndarray) -> np.ndarray:
        h = np.bincount(m.reshape(-1).astype(np.int64), minlength=NUM_CLASSES).astype(np.float64)
        return h / h.sum()

    return float(0.5 * np.abs(hist(maps) - hist(real)).sum())


@dataclass(frozen=True)
class SiteCount:
    """Scores of one set of samples."""

    n: int
    site_rate: float
    count_rate: float
    tumour_rate: float
    per_site: dict[str, float]
    dominant_rate: float
    per_site_dominant: dict[str, float]


def score_maps(maps: Sequence[np.ndarray], fields: Sequence[PromptFields]) -> SiteCount:
    """Site and count agreement of maps with the prompts they were made from."""
    hits = [site_hits(m, f.site) for m, f in zip(maps, fields, strict=True)]
    dom = [site_dominant(m, f.site) for m, f in zip(maps, fields, strict=True)]
    counts = [tumour_count(m) == f.count for m, f in zip(maps, fields, strict=True)]
    has = [tumour_count(m) > 0 for m in maps]
    per, per_dom = {}, {}
    for s in SITES:
        sel = [i for i, f in enumerate(fields) if f.site == s]
        if sel:
            per[s] = float(np.mean([hits[i] for i in sel]))
            per_dom[s] = float(np.mean([dom[i] for i in sel]))
    return SiteCount(
        n=len(maps),
        site_rate=float(np.mean(hits)),
        count_rate=float(np.mean(counts)),
        tumour_rate=float(np.mean(has)),
        per_site=per,
        dominant_rate=float(np.mean(dom)),
        per_site_dominant=per_dom,
    )


def count_confusion(
    maps: Sequence[np.ndarray], fields: Sequence[PromptFields], *, max_count: int = 4
) -> dict[str, list[int]]:
    """``{prompted count: [samples with 0, 1, ..., >= max_count generated components]}``."""
    out: dict[str, list[int]] = {}
    for m, f in zip(maps, fields, strict=True):
        row = out.setdefault(str(f.count), [0] * (max_count + 1))
        row[min(tumour_count(m), max_count)] += 1
    return dict(sorted(out.items()))


def count_correlation(maps: Sequence[np.ndarray], fields: Sequence[PromptFields]) -> float:
    """Spearman correlation of prompted and generated tumour counts (0 when the count is ignored).

    A softer measure than the exact match: it shows whether more tumours in the prompt give more
    tumours in the map, even when the number is not exact.
    """
    from scipy.stats import spearmanr

    gen = [tumour_count(m) for m in maps]
    want = [f.count for f in fields]
    if len(set(gen)) < 2 or len(set(want)) < 2:
        return 0.0
    return float(spearmanr(want, gen).statistic)


def _voxels_per_tumour(labels: np.ndarray) -> float:
    k = tumour_count(labels)
    return float((labels == TUMOUR).sum() / k) if k else float("nan")


def size_order(maps: Sequence[np.ndarray], fields: Sequence[PromptFields]) -> dict[str, float]:
    """Median voxels per tumour for ``small`` and ``large`` prompts, and the ordered-pair rate.

    ``order_rate`` is the probability that a ``large`` sample has more voxels per tumour than a
    ``small`` one (ties count half; maps without a tumour are left out): 0.5 when the size in the
    prompt is ignored, 1.0 when every large tumour is bigger than every small one.
    """
    vol = {z: [] for z in ("small", "large")}
    for m, f in zip(maps, fields, strict=True):
        v = _voxels_per_tumour(m)
        if not np.isnan(v):
            vol[f.size].append(v)
    small, large = np.asarray(vol["small"]), np.asarray(vol["large"])
    if small.size == 0 or large.size == 0:
        return {
            "small_voxels": float("nan"),
            "large_voxels": float("nan"),
            "order_rate": float("nan"),
        }
    diff = large[:, None] - small[None, :]
    return {
        "small_voxels": float(np.median(small)),
        "large_voxels": float(np.median(large)),
        "order_rate": float(((diff > 0) + 0.5 * (diff == 0)).mean()),
    }


def null_site_rates(maps: Sequence[np.ndarray], *, rule: str = "touch") -> dict[str, float]:
    """For maps made with the text removed: how often each site's rule (touch|dominant) is met."""
    fn = site_hits if rule == "touch" else site_dominant
    return {s: float(np.mean([fn(m, s) for m in maps])) for s in SITES}


#: A CT voxel above this HU is body, not air (lungs excepted, see :func:`blank_ct`).
BODY_HU = -900.0


def blank_ct(ct: np.ndarray, labels_on_ct: np.ndarray) -> np.ndarray:
    """Which CTs came out as air where their label map has solid organs.

    A CT is blank when fewer than half the voxels of its map's organs other than the lungs are
    above :data:`BODY_HU` (a real CT puts soft tissue near 0 HU there). Works on one CT
    ``(X, Y, Z)`` or a batch ``(B, X, Y, Z)`` with label maps on the same grid; returns a bool
    (or a bool array of length B).
    """
    ct, lab = np.asarray(ct), np.asarray(labels_on_ct)
    solid = (lab > 0) & (lab != class_id("lung"))
    axes = tuple(range(ct.ndim - 3, ct.ndim))
    above = ((ct > BODY_HU) & solid).sum(axis=axes)
    return above < 0.5 * solid.sum(axis=axes)


def organ_hu(ct: np.ndarray, labels_on_ct: np.ndarray) -> dict[str, tuple[float, bool]]:
    """Median HU per organ of :data:`HU_RANGES` present (>= 4 voxels, eroded once when possible).

    Returns:
        ``{organ: (median HU, inside the real range)}``.
    """
    out = {}
    for organ, (lo, hi) in HU_RANGES.items():
        m = labels_on_ct == GUIDEGEN_CLASSES.index(organ)
        if m.sum() < 4:
            continue
        core = ndimage.binary_erosion(m)
        if core.sum() >= 4:
            m = core
        med = float(np.median(ct[m]))
        out[organ] = (med, lo <= med <= hi)
    return out
