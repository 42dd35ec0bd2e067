"""Does a LesionDiffusion system follow the text of its report? Text alignment in CT (Fig. 4).

Unlike ``lesiondiffusion.control`` (model-grid crops of three organs), this runs the whole CT
pipeline (``place_lesion`` -> ``synthesize_lesion`` -> ``apply_result``) on real templates, for
every lesion type, and measures the written lesion in CT space.

For each lesion type and case, one report and box are drawn (``place_lesion``); then every prompt
that differs from a *base* report in ONE attribute is run in the same box with the **same noise**
(one torch seed per case), so any difference between the arms is caused by the text. Only the
contrasts the type's vocabulary allows (``report_bbox.LESION_TYPES[type]``) are run:

=========  ==============================  ======================================================
contrast   attribute / prompts             statistic (expected order)
=========  ==============================  ======================================================
shape      shape: round-like, irregular    sphericity and convexity (``shape_metrics``) of the
                                           mask, round-like > irregular (Fig. 4a)
density    density: hypo-, iso-,           lesion-minus-organ HU (``reports.measure_lesion``
           hyperdense                      ``delta_hu``), hypo < iso < hyper (Fig. 4b)
variation  density_variations:             robust HU std in the lesion core (``hu_std``),
           homogeneous, heterogeneous      heterogeneous > homogeneous (Fig. 4c)
margin     surface_characteristics:        boundary sharpness, well > ill (see below)
           well-, ill-defined margin
=========  ==============================  ======================================================

The base report is the drawn one with each contrasted attribute set to its first prompt. Size and
location are measured on the base arm of every case: the mean relative error of the realised
extent against the report's size (per axis, RAS), and whether the realised lesion satisfies the
report's location by ``reports.derive_report``'s rule (share of the one-voxel shell around the
lesion outside the organ: within < 0.1, protruding >= 0.5; hollow organs wall >= 0.1, else lumen),
with the fraction of lesion voxels inside the organ (of the input organ map).

**Boundary sharpness** (margin): the median gradient magnitude ``|grad HU|`` (HU/mm, central
differences at the CT spacing) over the voxels within one voxel of the lesion boundary, divided by
the lesion contrast ``|median(core) - median(ring 3..5 voxels outside)|`` floored at 10 HU; unit
1/mm, larger is sharper. ``measure_lesion``'s ``edge`` (share of the contrast the first voxel
outside still lacks) is a second row, over the pairs where it is defined (it needs a contrast of
2.5 x the noise, so it is often undefined).

**Ablation** (``ablation=True``): the same statistics with the null context (text removed). There
the arms get *independent* noise (the statistic then shows what seed noise alone produces; with
the same noise the null arms would be identical by construction). The null context ignores the
report, so each case runs one pool of ``k`` independent null draws (``k`` the most prompts of any
of its contrasts) and draw ``j`` stands for prompt ``j`` of every contrast.

p-values: one-sided Wilcoxon signed-rank on the paired differences in the expected direction (as
``lesiondiffusion.control``), per type and pooled over types ("all"). With ``n`` pairs the
smallest possible p is ``2**-n`` (n = 4: 0.0625), so the pooled rows are the ones to read.

Timing: the shipped demo system makes one lesion in about 1.8 s on one free CPU thread (25 DDIM
steps). The default ``n_per_type=4`` over all 14 types makes 208 lesions (up to 6 prompt arms and
3 null draws per case): about 7 minutes on a free core; 15 minutes (4.1 s per lesion) were measured
on a 2-core machine shared with other jobs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import report_bbox
from scipy import ndimage, stats

from ..lesiondiffusion.pipeline import _location_class
from ..lesiondiffusion.run import _template_for

__all__ = [
    "CONTRASTS",
    "alignment_figures",
    "alignment_table_md",
    "boundary_sharpness",
    "contrasts_for",
    "measure_alignment",
]

log = logging.getLogger(__name__)

#: contrast -> (report attribute, prompts in expected increasing order of nothing; see EXPECTED)
CONTRASTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "shape": ("shape", ("round-like", "irregular")),
    "density": ("density", ("hypodense", "isodense", "hyperdense")),
    "variation": ("density_variations", ("homogeneous", "heterogeneous")),
    "margin": ("surface_characteristics", ("well-defined margin", "ill-defined margin")),
}

#: contrast -> [(metric, prompt expected larger, prompt expected smaller)]
EXPECTED: dict[str, list[tuple[str, str, str]]] = {
    "shape": [
        ("sphericity", "round-like", "irregular"),
        ("convexity", "round-like", "irregular"),
    ],
    "density": [
        ("delta_hu", "isodense", "hypodense"),
        ("delta_hu", "hyperdense", "isodense"),
        ("delta_hu", "hyperdense", "hypodense"),
    ],
    "variation": [("hu_std", "heterogeneous", "homogeneous")],
    "margin": [
        ("sharpness", "well-defined margin", "ill-defined margin"),
        ("edge", "well-defined margin", "ill-defined margin"),
    ],
}

_SHORT = {
    "round-like": "round",
    "irregular": "irregular",
    "hypodense": "hypo",
    "isodense": "iso",
    "hyperdense": "hyper",
    "homogeneous": "homog.",
    "heterogeneous": "heterog.",
    "well-defined margin": "well-def.",
    "ill-defined margin": "ill-def.",
}
_TEMPLATES = ("abdomen", "chest")
_GALLERY_FIELD_MM = 60.0
_SIZE_OK = 0.3


def contrasts_for(lesion_type: str) -> dict[str, tuple[str, ...]]:
    """The contrasts (with their prompts) that the type's vocabulary allows (at least two prompts).

    Raises:
        ValueError: an unknown lesion type (``report_bbox`` says what is allowed).
    """
    spec = report_bbox.LESION_TYPES[report_bbox.lesion_type_name(lesion_type)]
    out: dict[str, tuple[str, ...]] = {}
    for name, (attr, prompts) in CONTRASTS.items():
        allowed = getattr(spec, attr)
        keep = tuple(p for p in prompts if p in allowed)
        if len(keep) >= 2:
            out[name] = keep
    return out


# ----------------------------------------------------------------------------- measurements


def _crop(mask: np.ndarray, pad: int) -> tuple[slice, ...]:
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - pad, 0)
    hi = np.minimum(idx.max(0) + pad + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def boundary_sharpness(ct: np.ndarray, lesion: np.ndarray, spacing: Sequence[float]) -> float:
    """Median ``|grad HU|`` on the lesion boundary over the lesion contrast (1/mm; see module doc).

    Args:
        ct: (X, Y, Z) HU.
        lesion: (X, Y, Z) mask, non-empty.
        spacing: mm per voxel.
    """
    m = lesion > 0
    sl = _crop(m, 8)
    c, mc = np.asarray(ct[sl], np.float64), m[sl]
    grad = np.gradient(c, *[float(s) for s in spacing])
    gmag = np.sqrt(sum(g**2 for g in grad))
    band = ndimage.binary_dilation(mc, iterations=1) & ~ndimage.binary_erosion(mc, iterations=1)
    din = ndimage.distance_transform_edt(mc)
    dout = ndimage.distance_transform_edt(~mc)
    core = mc & (din >= 2)
    core = core if core.sum() >= 4 else mc
    ring = (dout > 3) & (dout <= 5)
    contrast = abs(float(np.median(c[core])) - float(np.median(c[ring]))) if ring.any() else 0.0
    return float(np.median(gmag[band])) / max(contrast, 10.0)


def _location(lesion: np.ndarray, organs: np.ndarray, report: report_bbox.Report) -> dict[str, Any]:
    """Inside fraction, shell-outside fraction, realised class (``derive_report``'s rule), held."""
    from ..lesiondiffusion.reports import (
        PROTRUDING_SHELL_FRACTION,
        WALL_SHELL_FRACTION,
        WITHIN_SHELL_FRACTION,
    )

    m = lesion > 0
    sl = _crop(m, 3)
    mc = m[sl]
    organ = np.isin(organs[sl], np.asarray(report_bbox.organ_ids(report.organ)))
    shell = ndimage.binary_dilation(mc, iterations=1) & ~mc
    outside = float((~organ[shell]).mean()) if shell.any() else 0.0
    if report_bbox.is_hollow(report.organ):
        got: str | None = "wall" if outside >= WALL_SHELL_FRACTION else "lumen"
    elif outside < WITHIN_SHELL_FRACTION:
        got = "within"
    elif outside >= PROTRUDING_SHELL_FRACTION:
        got = "protruding"
    else:
        got = None  # between: neither clearly within nor protruding
    want = _location_class(report)
    return {
        "inside_fraction": float(organ[mc].mean()),
        "shell_outside": outside,
        "location_requested": want,
        "location_realised": got,
        "location_held": got == want,
    }


def _shape(les_r: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """Convexity and sphericity of a mask (Fig. 4a)."""
    import shape_metrics

    sl = _crop(les_r, 1)
    return {
        "convexity": float(shape_metrics.convexity(les_r[sl], spacing)),
        "sphericity": float(shape_metrics.sphericity(les_r[sl], spacing)),
    }


def _measure(inp: Any, result: Any) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Measurements of one written lesion, and its RAS CT and mask (for the galleries)."""
    from ..lesiondiffusion.pipeline import apply_result, realised_measurements

    ct, lesion, organs = apply_result(inp, result)
    rep = result.report
    meas = realised_measurements(inp, ct, lesion, organs, rep)
    ct_r = inp.ras(ct).astype(np.float32)
    les_r = inp.ras(lesion) > 0
    sp = inp.spacing
    req = np.asarray(rep.size, np.float64)
    ext = np.asarray(meas["extent_mm"], np.float64)
    out: dict[str, Any] = {
        "extent_mm": meas["extent_mm"],
        "requested_mm": [float(v) for v in rep.size],
        "box_mm": [round(float(v), 2) for v in result.box.size_mm(sp)],
        "size_error": float(np.mean(np.abs(ext - req) / req)),
        "volume_ml": meas.get("volume_ml"),
        "sphericity": meas.get("sphericity"),
        "solidity": meas.get("solidity"),
        "delta_hu": meas.get("delta_hu"),
        "mean_hu": meas.get("mean_hu"),
        "hu_std": meas.get("hu_std"),
        "std_ratio": meas.get("std_ratio"),
        "edge": meas.get("edge"),
        "sharpness": boundary_sharpness(ct_r, les_r, sp),
        **_location(les_r, inp.ras(inp.organs), rep),
    }
    return out, ct_r, les_r


def _axial(ct: np.ndarray, lesion: np.ndarray, spacing: Sequence[float]) -> dict[str, Any]:
    """Axial slice through the lesion centre, 1.5 x the lesion wide, at least ``_GALLERY_FIELD_MM``."""
    idx = np.argwhere(lesion)
    c = np.round(idx.mean(0)).astype(int)
    ext = (idx.max(0) - idx.min(0) + 1)[:2] * np.asarray(spacing[:2])
    field_mm = max(_GALLERY_FIELD_MM, 1.5 * float(ext.max()))
    half = np.ceil(field_mm / 2 / np.asarray(spacing[:2])).astype(int)
    pad = int(half.max())
    ctp = np.pad(ct[:, :, c[2]], pad, constant_values=-1024.0)
    lp = np.pad(lesion[:, :, c[2]], pad)
    sx = slice(c[0] + pad - half[0], c[0] + pad + half[0] + 1)
    sy = slice(c[1] + pad - half[1], c[1] + pad + half[1] + 1)
    return {
        "ct": np.rint(ctp[sx, sy].T[:, ::-1]).astype(int).tolist(),
        "lesion": lp[sx, sy].T[:, ::-1].astype(int).tolist(),
        "extent_mm": [float(2 * half[0] * spacing[0]), float(2 * half[1] * spacing[1])],
    }


# ------------------------------------------------------------------------------- statistics


def _one_sided_p(diff: np.ndarray) -> float | None:
    d = diff[np.isfinite(diff)]
    if d.size == 0:
        return None
    if np.allclose(d, 0):
        return 1.0
    return float(stats.wilcoxon(d, alternative="greater").pvalue)


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _pair_stats(cases: list[dict[str, Any]], arm_key: str, contrast: str) -> list[dict[str, Any]]:
    """Per expected order of ``contrast``: means, mean paired difference, p, fraction in order."""
    rows = []
    for metric, hi, lo in EXPECTED[contrast]:
        a, b = [], []
        for case in cases:
            arms = case.get(arm_key, {}).get(contrast)
            if not arms or hi not in arms or lo not in arms:
                continue
            a.append(_num(arms[hi].get(metric)))
            b.append(_num(arms[lo].get(metric)))
        if not a:
            continue
        av, bv = np.asarray(a), np.asarray(b)
        d = av - bv
        ok = np.isfinite(d)
        rows.append(
            {
                "metric": metric,
                "order": f"{hi} > {lo}",
                "n": int(ok.sum()),
                "mean_hi": float(np.nanmean(av)) if np.isfinite(av).any() else None,
                "mean_lo": float(np.nanmean(bv)) if np.isfinite(bv).any() else None,
                "gap": float(d[ok].mean()) if ok.any() else None,
                "p": _one_sided_p(d),
                "in_order": float((d[ok] > 0).mean()) if ok.any() else None,
            }
        )
    return rows


def _summaries(cases: list[dict[str, Any]], ablation: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for contrast in CONTRASTS:
        text_rows = _pair_stats(cases, "text", contrast)
        if not text_rows:
            continue
        null_rows = _pair_stats(cases, "null", contrast) if ablation else []
        by = {(r["metric"], r["order"]): r for r in null_rows}
        for r in text_rows:
            r["null"] = by.get((r["metric"], r["order"]))
        out[contrast] = text_rows
    base = [c["base"] for c in cases]
    if base:
        err = np.array([b["size_error"] for b in base])
        out["size"] = {
            "n": len(base),
            "mean_error": float(err.mean()),
            "within_30": float((err <= _SIZE_OK).mean()),
        }
        out["location"] = {
            "n": len(base),
            "held": float(np.mean([b["location_held"] for b in base])),
            "inside_fraction": float(np.mean([b["inside_fraction"] for b in base])),
            "by_location": {
                loc: float(
                    np.mean([b["location_held"] for b in base if b["location_requested"] == loc])
                )
                for loc in sorted({b["location_requested"] for b in base})
            },
        }
    return out


# ---------------------------------------------------------------------------------- running


def _with(report: report_bbox.Report, **kw: Any) -> report_bbox.Report:
    d = report.to_dict()
    d.update(kw)
    return report_bbox.Report.from_dict(d)


def _seeds(seed: int, type_index: int, case: int) -> tuple[np.random.Generator, int]:
    rng = np.random.default_rng([int(seed), 17, type_index, case])
    torch_seed = int(
        np.random.SeedSequence([int(seed), 17, type_index, case]).generate_state(1, np.uint64)[0]
        >> 1
    )
    return rng, torch_seed


def _run_case(
    run: Any,
    inp: Any,
    drawn: report_bbox.Report,
    box: Any,
    contrasts: Mapping[str, tuple[str, ...]],
    torch_seed: int,
    *,
    text: bool,
    ablation: bool,
    keep_views: bool,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """All arms of one case: prompt arms (same noise) and the null pool; measurements and views."""
    base = _with(drawn, **{CONTRASTS[c][0]: prompts[0] for c, prompts in contrasts.items()})
    case: dict[str, Any] = {
        "torch_seed": torch_seed,
        "base_report": base.to_dict(),
        "box": box.to_dict(),
        "text": {},
        "null": {},
    }
    # Identical reports run once. Without text the arms get independent noise (seed offset by the
    # prompt's position), as in the ablation.
    done: dict[str, tuple[dict[str, Any], np.ndarray, np.ndarray]] = {}

    def arm(rep: report_bbox.Report, j: int, need_shape: bool) -> str:
        key = rep.model_dump_json() if text else f"{j}:{rep.model_dump_json()}"
        if key not in done:
            s = torch_seed if text else torch_seed + 7919 * (j + 1)
            done[key] = _measure(inp, run(inp, rep, box, s, text))
        vals, _, les_r = done[key]
        if need_shape and "convexity" not in vals:
            vals.update(_shape(les_r, inp.spacing))
        return key

    case["base"] = done[arm(base, 0, "shape" in contrasts)][0]
    views: dict[str, Any] = {}
    for c, prompts in contrasts.items():
        case["text"][c] = {}
        for j, p in enumerate(prompts):
            key = arm(_with(base, **{CONTRASTS[c][0]: p}), j, c == "shape")
            vals, ct_r, les_r = done[key]
            case["text"][c][p] = vals
            if c in ("density", "variation") and keep_views:
                views.setdefault(c, {})[p] = _axial(ct_r, les_r, inp.spacing)
    k_null = max([len(v) for v in contrasts.values()], default=0)
    if ablation and text and k_null:
        pool = []
        for j in range(k_null):
            vals, _, les_r = _measure(
                inp, run(inp, base, box, torch_seed + 104_729 * (j + 1), False)
            )
            if "shape" in contrasts:
                vals.update(_shape(les_r, inp.spacing))
            pool.append(vals)
        for c, prompts in contrasts.items():
            case["null"][c] = {p: pool[j] for j, p in enumerate(prompts)}
    return case, views


def measure_alignment(
    system: Any,
    *,
    types: Sequence[str] | None = None,
    n_per_type: int = 4,
    seed: int = 0,
    steps: int | None = None,
    templates: Sequence[Any] | None = None,
    progress: bool = False,
    text: bool = True,
    ablation: bool = True,
    gallery_cases: int = 2,
) -> dict[str, Any]:
    """Measure how the written lesions follow their reports (see the module docstring).

    Args:
        system: a LesionDiffusion system (``LesionDiffusionSystem`` or any ``LesionSystem``).
        types: lesion types (default: all of ``report_bbox.LESION_TYPES`` whose organ a template has).
        n_per_type: cases (boxes) per type.
        seed: seed of reports, boxes and noise.
        steps: DDIM steps (default: the preset's).
        templates: ``rulesynth.Template`` objects (default: the bundled ``abdomen`` and ``chest``);
            each type goes into the template with most of its organ.
        progress: tqdm bar over types.
        text: ``False`` runs the prompt arms with the null context too (a system trained without
            text); they then get independent noise, like the ablation.
        ablation: also run the null-context arms (independent noise; only with ``text``).
        gallery_cases: cases per type whose axial slices are kept for the Fig. 4b/4c galleries.

    Returns:
        JSON-ready dict: ``settings``, ``types`` (per type: template, contrasts, summaries),
        ``all`` (summaries pooled over types), ``cases`` (per-case values of every arm),
        ``gallery`` (axial slices), ``failed`` and ``seconds``.

    Raises:
        ValueError: an unknown lesion type or ``n_per_type < 1``.
    """
    import torch
    from tqdm.auto import tqdm

    from ..lesiondiffusion.pipeline import (
        ReportSource,
        SynthesisError,
        ct_input_from_arrays,
        place_lesion,
        synthesize_lesion,
        system_info,
    )

    if not isinstance(n_per_type, int) or n_per_type < 1:
        raise ValueError(f"n_per_type must be a positive integer, got {n_per_type!r}")
    all_types = list(report_bbox.LESION_TYPES)
    chosen = all_types if types is None else [report_bbox.lesion_type_name(t) for t in types]
    if templates is None:
        from ..rulesynth import load_templates

        templates = load_templates(list(_TEMPLATES))
    inputs = {
        t.name: ct_input_from_arrays(
            np.asarray(t.ct), np.asarray(t.organs), np.asarray(t.affine), name=t.name
        )
        for t in templates
    }
    t_start = time.perf_counter()
    cases: list[dict[str, Any]] = []
    gallery: list[dict[str, Any]] = []
    failed: dict[str, str] = {}
    per_type: dict[str, Any] = {}
    n_lesions = 0
    synth_s = 0.0

    def run(inp: Any, report: Any, box: Any, torch_seed: int, with_text: bool) -> Any:
        nonlocal n_lesions, synth_s
        t0 = time.perf_counter()
        res = synthesize_lesion(
            system,
            inp,
            report,
            box,
            generator=torch.Generator(device="cpu").manual_seed(torch_seed),
            steps=steps,
            text=with_text,
        )
        synth_s += time.perf_counter() - t0
        n_lesions += 1
        return res

    for lt in tqdm(chosen, desc="alignment", disable=not progress):
        ti = all_types.index(lt)
        template = _template_for(lt, inputs)
        if template is None:
            failed[lt] = "no template has its organ"
            continue
        inp = inputs[template]
        contrasts = contrasts_for(lt)
        type_cases = []
        for i in range(n_per_type):
            rng, torch_seed = _seeds(seed, ti, i)
            try:
                drawn, box = place_lesion(ReportSource(lesion_type=lt), inp, rng)
                case, views = _run_case(
                    run,
                    inp,
                    drawn,
                    box,
                    contrasts,
                    torch_seed,
                    text=text,
                    ablation=ablation,
                    keep_views=i < gallery_cases,
                )
            except (SynthesisError, ValueError) as exc:
                failed[f"{lt}/{i}"] = str(exc).splitlines()[0]
                log.warning("alignment: %s case %d failed: %s", lt, i, exc)
                continue
            case.update(lesion_type=lt, template=template, index=i)
            type_cases.append(case)
            for c, v in views.items():
                metric = "delta_hu" if c == "density" else "hu_std"
                values = {p: case["text"][c][p].get(metric) for p in v}
                gallery.append(
                    {"lesion_type": lt, "case": i, "contrast": c, "arms": v, "values": values}
                )
        cases += type_cases
        per_type[lt] = {
            "template": template,
            "contrasts": {c: list(p) for c, p in contrasts.items()},
            "n": len(type_cases),
            **_summaries(type_cases, ablation),
        }
    seconds = time.perf_counter() - t_start
    return {
        "settings": {
            "system": system_info(system),
            "n_per_type": n_per_type,
            "seed": seed,
            "steps": steps if steps is not None else int(getattr(system.preset, "steps", 0)),
            "text": text,
            "ablation": ablation,
            "templates": list(inputs),
        },
        "types": per_type,
        "all": _summaries(cases, ablation),
        "cases": cases,
        "gallery": gallery,
        "failed": failed,
        "seconds": {
            "total": round(seconds, 2),
            "synthesis": round(synth_s, 2),
            "lesions": n_lesions,
            "per_lesion": round(synth_s / max(n_lesions, 1), 3),
        },
    }


# ---------------------------------------------------------------------------------- reports


def _fmt(v: Any, spec: str = ".3g") -> str:
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)


def _row_text(r: dict[str, Any]) -> str:
    return (
        f"{_fmt(r['mean_hi'])} vs {_fmt(r['mean_lo'])}, gap {_fmt(r['gap'], '+.3g')}, "
        f"p={_fmt(r['p'], '.2g')}, {_fmt(100 * r['in_order'] if r['in_order'] is not None else None, '.0f')}%"
    )


def _null_text(r: dict[str, Any]) -> str:
    n = r.get("null")
    if not n:
        return "-"
    return f"gap {_fmt(n['gap'], '+.3g')}, p={_fmt(n['p'], '.2g')}, {_fmt(100 * n['in_order'] if n['in_order'] is not None else None, '.0f')}%"


_UNITS = {
    "edge": " (measure_lesion)",
    "sphericity": "",
    "convexity": "",
    "delta_hu": " (HU)",
    "hu_std": " (HU)",
    "sharpness": " (1/mm)",
}


def alignment_table_md(result: Mapping[str, Any]) -> str:
    """Markdown tables: per contrast and type (text vs text removed), then size and location."""
    st = result["settings"]
    lines = [
        f"Text alignment in CT: {st['n_per_type']} cases per type, seed {st['seed']}, "
        f"{st['steps']} DDIM steps, templates {', '.join(st['templates'])}; "
        f"{result['seconds']['lesions']} lesions in {result['seconds']['total']:.0f} s "
        f"({result['seconds']['per_lesion']:.2f} s per lesion).",
        "",
        "Same box and same noise across the prompts of a case; the ablation removes the text "
        "(independent noise per arm). Cells: mean (expected larger) vs mean (expected smaller), "
        "mean paired gap, one-sided Wilcoxon p, % of pairs in the expected order.",
        "",
        "| contrast | type | n | metric | expected | with text | text removed |",
        "|---|---|---|---|---|---|---|",
    ]
    scopes = [*result["types"].items(), ("all types", result["all"])]
    for contrast in CONTRASTS:
        for name, summ in scopes:
            for r in summ.get(contrast, []):
                who = f"**{name}**" if name == "all types" else name
                lines.append(
                    f"| {contrast} | {who} | {r['n']} | {r['metric']}{_UNITS.get(r['metric'], '')} | "
                    f"{r['order']} | {_row_text(r)} | {_null_text(r)} |"
                )
    lines += [
        "",
        "| type | template | n | size error (mean rel.) | within 30 % | location held | "
        "voxels inside organ |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, summ in scopes:
        if "size" not in summ:
            continue
        sz, loc = summ["size"], summ["location"]
        who = f"**{name}**" if name == "all types" else name
        tmpl = summ.get("template", "")
        lines.append(
            f"| {who} | {tmpl} | {sz['n']} | {100 * sz['mean_error']:.0f} % | "
            f"{100 * sz['within_30']:.0f} % | {100 * loc['held']:.0f} % | "
            f"{100 * loc['inside_fraction']:.0f} % |"
        )
    if "location" in result["all"]:
        by = result["all"]["location"]["by_location"]
        lines += [
            "",
            "Location held by requested location: "
            + ", ".join(f"{k} {100 * v:.0f} %" for k, v in by.items())
            + ".",
        ]
    if result.get("failed"):
        lines += ["", "Not made: " + "; ".join(f"{k}: {v}" for k, v in result["failed"].items())]
    return "\n".join(lines) + "\n"


def _figure(w: float, h: float) -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h))
    FigureCanvasAgg(fig)
    return fig


def _fig_shape(result: Mapping[str, Any], path: Path) -> Path | None:
    types = [t for t, s in result["types"].items() if s.get("shape")]
    if not types:
        return None
    colors = {"round-like": "#1f77b4", "irregular": "#d62728"}
    fig = _figure(3.4 * len(types) + 0.4, 3.8)
    axes = fig.subplots(1, len(types), squeeze=False)[0]
    for ax, lt in zip(axes, types, strict=True):
        cs = [c for c in result["cases"] if c["lesion_type"] == lt and "shape" in c["text"]]
        for p, col in colors.items():
            x = np.array([_num(c["text"]["shape"][p].get("convexity")) for c in cs])
            y = np.array([_num(c["text"]["shape"][p].get("sphericity")) for c in cs])
            ax.scatter(x, y, s=22, c=col, alpha=0.7, label=f'"{p}"')
            if np.isfinite(x).any():
                ax.scatter(
                    np.nanmean(x),
                    np.nanmean(y),
                    s=160,
                    c=col,
                    marker="*",
                    edgecolors="k",
                    linewidths=0.8,
                    zorder=3,
                )
        for c in cs:  # pairs (same noise) joined by a line
            a, b = c["text"]["shape"]["round-like"], c["text"]["shape"]["irregular"]
            ax.plot(
                [_num(a.get("convexity")), _num(b.get("convexity"))],
                [_num(a.get("sphericity")), _num(b.get("sphericity"))],
                c="0.75",
                lw=0.6,
                zorder=0,
            )
        row = result["types"][lt]["shape"][0]
        ax.set_title(f"{lt} (n={row['n']})\nsphericity p={_fmt(row['p'], '.2g')}", fontsize=9)
        ax.set_xlabel("convexity")
        ax.set_ylabel("sphericity")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle("Fig. 4a  Shape prompts, same box and noise (stars: class means)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _fig_gallery(result: Mapping[str, Any], contrast: str, path: Path, title: str) -> Path | None:
    items = [g for g in result["gallery"] if g["contrast"] == contrast]
    if not items:
        return None
    # one case per lesion type first (then second cases), at most 8 columns
    items = sorted(items, key=lambda g: g["case"])[:8]
    order = list(dict.fromkeys(g["lesion_type"] for g in result["gallery"]))
    items.sort(key=lambda g: (order.index(g["lesion_type"]), g["case"]))
    prompts = [p for p in CONTRASTS[contrast][1] if any(p in g["arms"] for g in items)]
    label = "lesion - organ" if contrast == "density" else "HU std"
    fig = _figure(1.9 * len(items) + 1.0, 2.1 * len(prompts) + 0.6)
    axes = fig.subplots(len(prompts), len(items), squeeze=False)
    for col, g in enumerate(items):
        lung = report_bbox.LESION_TYPES[g["lesion_type"]].organ == "lung"
        lo, hi = (-1350.0, 150.0) if lung else (-160.0, 240.0)  # W1500 L-600 / W400 L40
        for row, p in enumerate(prompts):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if p not in g["arms"]:
                ax.axis("off")
                continue
            v = g["arms"][p]
            ex = v["extent_mm"]
            ax.imshow(
                np.asarray(v["ct"], float),
                cmap="gray",
                vmin=lo,
                vmax=hi,
                origin="lower",
                extent=(0, ex[0], 0, ex[1]),
                interpolation="nearest",
            )
            ax.contour(
                np.asarray(v["lesion"], float),
                levels=[0.5],
                colors=["#ff3030"],
                linewidths=0.6,
                origin="lower",
                extent=(0, ex[0], 0, ex[1]),
            )
            val = g["values"].get(p)
            ax.set_xlabel(
                f"{label} {_fmt(val, '+.0f' if contrast == 'density' else '.0f')} HU", fontsize=7
            )
            if col == 0:
                ax.set_ylabel(f'"{_SHORT.get(p, p)}"', fontsize=9)
            if row == 0:
                ax.set_title(f"{g['lesion_type']} #{g['case']}", fontsize=7)
    fig.suptitle(
        f"{title}  (axial, field >= {_GALLERY_FIELD_MM:.0f} mm, W400 L40, lung W1500 L-600; same box and noise per column)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def alignment_figures(result: Mapping[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``fig4a_shape.png``, ``fig4b_density.png``, ``fig4c_variation.png`` (those with data)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figs = {
        "fig4a_shape": _fig_shape(result, out / "fig4a_shape.png"),
        "fig4b_density": _fig_gallery(
            result, "density", out / "fig4b_density.png", "Fig. 4b  Density prompts"
        ),
        "fig4c_variation": _fig_gallery(
            result, "variation", out / "fig4c_variation.png", "Fig. 4c  Density-variation prompts"
        ),
    }
    return {k: v for k, v in figs.items() if v is not None}
