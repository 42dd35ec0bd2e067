"""Image quality of generated lesions: 2.5D FID, KID and LPIPS against reference lesion crops.

All sets are :class:`~ctsynth_bench.eval.sets.LesionCropSet` crops on one isotropic grid, centred
on their lesion. Each crop is sliced along its three axes (``slices_per_axis`` slices from the
central ``central_fraction`` of each axis, where the lesion is), the HU window ``window`` maps to
[-1, 1], and the networks of ``shape_metrics`` give per-slice features:

* **FID** (the Fréchet distance of ``shape_metrics.frechet_distance`` between the Inception
  features' Gaussians, per axis and their mean; computed in sample space by
  :func:`frechet_distance_samples`, the same number without 2048 x 2048 matrices). FID is biased upwards at small sample sizes (here tens of crops x slices against
  2048 feature dimensions), so compare FIDs only at equal ``n`` and read the reference rows.
* **KID** (``shape_metrics.kid_from_features``: unbiased MMD^2 with the cubic kernel, mean over
  random subsets); unbiased, about 0 for two samples of one distribution. A set against *itself*
  gives a small negative value at small n (about ``-2 (k_self - k_cross) / n``: the unbiased
  estimator drops the self-similarities within a set but not across the two).
* **LPIPS** needs pairs. ``lpips_nearest``: each crop of the first set against its nearest crop
  of the second (Euclidean distance of the crops' mean Inception features over all their slices);
  0 for a set against itself, a precision-like "how close is each lesion to some reference".
  ``lpips_random``: each crop against a seeded random crop of the second set (a permutation,
  cycled when the second set is smaller); the typical distance between two lesions.

**Reference rows** tell the reader what a small or large value means: each reference set split in
two halves by source case (crops of one lesion stay together), and every pair of reference sets
(e.g. real vs rule-based). A generated-vs-reference value near the halves' value is as close as
two samples of the reference itself.

Feature extraction runs the Inception network once per crop and slice; LPIPS runs once per crop
pair and slice, for both pairings of every row. Measured on one thread of a 2-core machine shared
with other jobs: 76 crops at 4 slices per axis, 10 rows: features 158 s, everything 522 s. The
weights must be installed (``shape-metrics weights install``); nothing is downloaded here.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .sets import LesionCropSet

__all__ = ["frechet_distance_samples", "measure_quality", "quality_figure", "quality_table_md"]

AXES = ("x", "y", "z")
#: Crops of the generated set are named so in rows and figures.
GENERATED = "generated"


def _features(
    s: LesionCropSet,
    *,
    window: tuple[float, float],
    slices_per_axis: int,
    central_fraction: float,
    progress: bool,
) -> dict[str, np.ndarray]:
    """Per-axis Inception features reshaped to (N crops, slices_per_axis, 2048)."""
    import shape_metrics

    f = shape_metrics.inception_features_2_5d(
        np.ascontiguousarray(s.ct, np.float32),
        window=window,
        slices_per_axis=slices_per_axis,
        central_fraction=central_fraction,
        device="cpu",
        progress=progress,
    )
    n = len(s)
    return {a: f[a].reshape(n, -1, f[a].shape[-1]) for a in AXES}


def frechet_distance_samples(x: np.ndarray, y: np.ndarray) -> float:
    """FID of two feature samples (N, D), (M, D): ``shape_metrics.frechet_distance`` of their Gaussians.

    Computed in sample space, exact for any N, M: with centred ``A`` (N, D) and ``B`` (M, D),
    ``tr sqrt(S_a S_b)`` is the nuclear norm of ``A B^T / sqrt((N-1)(M-1))``, so nothing of size
    D x D (2048 x 2048 for Inception) is formed; the same number, far faster when N, M << D.
    """
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"FID needs at least 2 samples per set; got {len(x)} and {len(y)}")
    a = x - x.mean(0)
    b = y - y.mean(0)
    na, nb = len(x) - 1, len(y) - 1
    cross = np.linalg.svd(a @ b.T / np.sqrt(na * nb), compute_uv=False).sum()
    d = x.mean(0) - y.mean(0)
    val = float(d @ d + (a * a).sum() / na + (b * b).sum() / nb - 2.0 * cross)
    return max(val, 0.0)


def _fid_kid(
    fa: Mapping[str, np.ndarray], fb: Mapping[str, np.ndarray], seed: int
) -> tuple[dict[str, float], dict[str, float]]:
    import shape_metrics
    import torch

    fid: dict[str, float] = {}
    kid: dict[str, float] = {}
    gen = torch.Generator().manual_seed(seed)
    for a in AXES:
        x = fa[a].reshape(-1, fa[a].shape[-1])
        y = fb[a].reshape(-1, fb[a].shape[-1])
        fid[a] = frechet_distance_samples(x, y)
        kid[a] = float(shape_metrics.kid_from_features(x, y, n_subsets=100, generator=gen)[0])
    fid["mean"] = float(np.mean([fid[a] for a in AXES]))
    kid["mean"] = float(np.mean([kid[a] for a in AXES]))
    return fid, kid


def _crop_embedding(f: Mapping[str, np.ndarray]) -> np.ndarray:
    """(N, 3 * 2048): each crop's mean feature per axis, concatenated."""
    return np.concatenate([f[a].mean(axis=1) for a in AXES], axis=1)


def _lpips(
    a: np.ndarray, b: np.ndarray, *, window: tuple[float, float], slices: int, central: float
) -> dict[str, float]:
    import shape_metrics

    return {
        k: float(v)
        for k, v in shape_metrics.lpips_2_5d(
            np.ascontiguousarray(a, np.float32),
            np.ascontiguousarray(b, np.float32),
            window=window,
            slices_per_axis=slices,
            central_fraction=central,
            device="cpu",
        ).items()
    }


def _halves(s: LesionCropSet) -> tuple[np.ndarray, np.ndarray] | None:
    """Crop indices of two halves of a set, split by source case (alternating cases)."""
    cases = list(dict.fromkeys(s.case))
    if len(cases) >= 2:
        first = {c for k, c in enumerate(cases) if k % 2 == 0}
        a = np.array([i for i, c in enumerate(s.case) if c in first])
        b = np.array([i for i, c in enumerate(s.case) if c not in first])
    else:  # one lesion only: alternate crops (they are offset crops of the same lesion)
        a, b = np.arange(0, len(s), 2), np.arange(1, len(s), 2)
    return (a, b) if min(len(a), len(b)) >= 2 else None


def _row(
    name_a: str,
    name_b: str,
    kind: str,
    ct_a: np.ndarray,
    ct_b: np.ndarray,
    fa: Mapping[str, np.ndarray],
    fb: Mapping[str, np.ndarray],
    *,
    window: tuple[float, float],
    slices: int,
    central: float,
    seed: int,
) -> dict[str, Any]:
    fid, kid = _fid_kid(fa, fb, seed)
    ea, eb = _crop_embedding(fa), _crop_embedding(fb)
    d = ((ea[:, None, :] - eb[None, :, :]) ** 2).sum(-1)
    nearest = d.argmin(axis=1)
    rng = np.random.default_rng([seed, len(ct_a), len(ct_b)])
    perm = np.concatenate([rng.permutation(len(ct_b)) for _ in range(-(-len(ct_a) // len(ct_b)))])
    rand = perm[: len(ct_a)]
    return {
        "a": name_a,
        "b": name_b,
        "kind": kind,
        "n_a": len(ct_a),
        "n_b": len(ct_b),
        "slices_a": int(fa["x"].shape[0] * fa["x"].shape[1]),
        "slices_b": int(fb["x"].shape[0] * fb["x"].shape[1]),
        "fid": fid,
        "kid": kid,
        "lpips_nearest": _lpips(ct_a, ct_b[nearest], window=window, slices=slices, central=central),
        "lpips_random": _lpips(ct_a, ct_b[rand], window=window, slices=slices, central=central),
    }


def measure_quality(
    generated: LesionCropSet,
    references: Mapping[str, LesionCropSet],
    *,
    window: tuple[float, float] = (-1000.0, 1000.0),
    slices_per_axis: int = 4,
    central_fraction: float = 0.5,
    reference_rows: bool = True,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """FID, KID and LPIPS of ``generated`` against each reference set, plus reference rows.

    Args:
        generated: crops of generated lesions (at least 2).
        references: name -> reference crops (at least 2 each), on the generated set's grid.
        window: HU window of the networks' input (``shape_metrics`` default: -1000..1000 HU).
        slices_per_axis: slices per crop and axis.
        central_fraction: slices come from this central fraction of each axis (the lesion).
        reference_rows: add each reference split in two halves and every pair of references.
        seed: seed of the KID subsets and the random LPIPS pairing.
        progress: tqdm bars of the feature extraction.

    Returns:
        JSON-ready dict: ``settings``, ``sets`` (n crops, source, lesion types), ``rows`` (one per
        comparison: ``a``, ``b``, ``kind``, ``n_a``, ``n_b``, ``fid``/``kid``/``lpips_nearest``/
        ``lpips_random`` each ``{"x", "y", "z", "mean"}``), ``seconds``.

    Raises:
        ValueError: a set with fewer than 2 crops, no reference, or sets on different grids.
    """
    if not references:
        raise ValueError("measure_quality needs at least one reference set")
    sets = {GENERATED: generated, **dict(references)}
    for name, s in sets.items():
        if len(s) < 2:
            raise ValueError(
                f"set {name!r} has {len(s)} crops; FID and KID need at least 2 per set "
                "(more for meaningful values)"
            )
        if s.size != generated.size or not np.isclose(s.spacing, generated.spacing):
            raise ValueError(
                f"set {name!r} is on a {s.size}^3 grid at {s.spacing} mm, the generated set on "
                f"{generated.size}^3 at {generated.spacing} mm; cut both with eval.sets defaults"
            )
    if slices_per_axis < 1:
        raise ValueError(f"slices_per_axis must be >= 1, got {slices_per_axis}")
    t0 = time.perf_counter()
    feats: dict[str, dict[str, np.ndarray]] = {}
    seen: dict[int, str] = {}  # one set passed twice is featurized once
    for name, s in sets.items():
        if id(s) in seen:
            feats[name] = feats[seen[id(s)]]
            continue
        seen[id(s)] = name
        feats[name] = _features(
            s,
            window=window,
            slices_per_axis=slices_per_axis,
            central_fraction=central_fraction,
            progress=progress,
        )
    t_feat = time.perf_counter() - t0
    opts = {"window": window, "slices": slices_per_axis, "central": central_fraction, "seed": seed}
    rows = [
        _row(
            GENERATED,
            name,
            "generated vs reference",
            generated.ct,
            s.ct,
            feats[GENERATED],
            feats[name],
            **opts,
        )
        for name, s in references.items()
    ]
    if reference_rows:
        for name, s in sets.items():
            halves = _halves(s)
            if halves is None:
                continue
            a, b = halves
            fa = {k: v[a] for k, v in feats[name].items()}
            fb = {k: v[b] for k, v in feats[name].items()}
            rows.append(
                _row(
                    f"{name} (half A)",
                    f"{name} (half B)",
                    "same set, two halves",
                    s.ct[a],
                    s.ct[b],
                    fa,
                    fb,
                    **opts,
                )
            )
        names = list(references)
        for i, na in enumerate(names):
            for nb in names[i + 1 :]:
                rows.append(
                    _row(
                        na,
                        nb,
                        "reference vs reference",
                        references[na].ct,
                        references[nb].ct,
                        feats[na],
                        feats[nb],
                        **opts,
                    )
                )
    return {
        "settings": {
            "window_hu": list(window),
            "slices_per_axis": slices_per_axis,
            "central_fraction": central_fraction,
            "crop_size": generated.size,
            "crop_spacing_mm": generated.spacing,
            "lpips_net": "alexnet",
            "seed": seed,
        },
        "sets": {
            name: {
                "n": len(s),
                "lesions": len(set(s.case)),
                "source": s.source,
                "types": {t: s.lesion_type.count(t) for t in s.types()},
            }
            for name, s in sets.items()
        },
        "rows": rows,
        "seconds": {
            "features": round(t_feat, 2),
            "total": round(time.perf_counter() - t0, 2),
        },
    }


def quality_table_md(result: Mapping[str, Any]) -> str:
    """Markdown table of the rows (mean over the three slicing axes)."""
    st = result["settings"]
    lines = [
        f"Lesion crops {st['crop_size']}^3 at {st['crop_spacing_mm']} mm, {st['slices_per_axis']} "
        f"slices per axis from the central {100 * st['central_fraction']:.0f} % of each axis, "
        f"HU window {st['window_hu'][0]:g}..{st['window_hu'][1]:g}. Values are means over the "
        "three slicing axes. FID is biased upwards at these small n (compare only at equal n); "
        "KID is unbiased (about 0 for one distribution). LPIPS nearest: each crop vs its nearest "
        "crop of the other set (Inception features); random: vs a random crop.",
        "",
        "Sets: "
        + "; ".join(
            f"{name}: {v['n']} crops of {v['lesions']} lesions ({v['source']})"
            for name, v in result["sets"].items()
        )
        + ".",
        "",
        "| comparison | kind | n | FID | KID x 1000 | LPIPS nearest | LPIPS random |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['a']} vs {r['b']} | {r['kind']} | {r['n_a']} vs {r['n_b']} | "
            f"{r['fid']['mean']:.1f} | {1000 * r['kid']['mean']:.1f} | "
            f"{r['lpips_nearest']['mean']:.3f} | {r['lpips_random']['mean']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def _window_for(ct: np.ndarray) -> tuple[float, float]:
    """Lung window for crops that are mostly lung, soft tissue otherwise (vmin, vmax)."""
    return (-1350.0, 150.0) if float(np.median(ct)) < -400 else (-160.0, 240.0)


def quality_figure(
    generated: LesionCropSet,
    references: Mapping[str, LesionCropSet],
    out: str | Path,
    *,
    n: int = 6,
    seed: int = 0,
) -> Path:
    """PNG gallery: one row per set, ``n`` crops each (central axial slice, lesion outline).

    Crops are a seeded sample of each set; the window is per crop (lung W1500 L-600 for crops that
    are mostly lung, soft tissue W400 L40 otherwise).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sets: dict[str, LesionCropSet] = {GENERATED: generated, **dict(references)}
    fig = Figure(figsize=(1.7 * n + 1.2, 1.9 * len(sets) + 0.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(sets), n, squeeze=False)
    rng = np.random.default_rng(seed)
    for row, (name, s) in enumerate(sets.items()):
        pick = np.sort(rng.choice(len(s), size=min(n, len(s)), replace=False))
        for col in range(n):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col >= len(pick):
                ax.axis("off")
                continue
            i = int(pick[col])
            z = s.size // 2
            img = s.ct[i][:, :, z].T[:, ::-1]
            lab = s.lesion[i][:, :, z].T[:, ::-1]
            lo, hi = _window_for(s.ct[i])
            ext = s.size * s.spacing
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, origin="lower", extent=(0, ext, 0, ext))
            if lab.any():
                ax.contour(
                    lab.astype(float),
                    levels=[0.5],
                    colors=["#ff3030"],
                    linewidths=0.6,
                    origin="lower",
                    extent=(0, ext, 0, ext),
                )
            ax.set_xlabel(f"{s.lesion_type[i]}\n{s.case[i]}", fontsize=6)
            if col == 0:
                ax.set_ylabel(f"{name}\n(n={len(s)})", fontsize=8)
    fig.suptitle(
        f"Lesion crops, central axial slice ({generated.size * generated.spacing:.0f} mm field, "
        "red: lesion outline)",
        fontsize=9,
    )
    fig.tight_layout()
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
