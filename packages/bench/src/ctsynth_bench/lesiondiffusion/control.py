"""Does a LesionDiffusion system follow its report? The text-control measurement of issue 15.

On held-out boxes (random points of liver, kidney and pancreas in real templates, drawn from a seed
stream that the training crops never use), prompts that differ in one attribute are run with the
**same noise**, so any difference between their outputs is caused by the text:

- LMNet shape: ``"round-like"`` vs ``"irregular"``; sphericity (``shape_metrics.sphericity``) of
  each pair; one-sided Wilcoxon signed-rank p-value of round > irregular; fraction of pairs in the
  right order. Size: each mask's extent against the requested box extent (within 30 % on average
  over the three axes).
- LINet density: ``"hypodense"``, ``"isodense"``, ``"hyperdense"`` inpainted into the same
  ellipsoid mask (inscribed in the box) of the same crop; lesion-minus-organ HU (median in the
  mask minus the median of the organ ring around it, outside the latent footprint); fraction of
  cases ordered hypo < iso < hyper, and of each pairwise order.
- Ablation: the same statistics with the null context (text removed). There the two (three) arms
  get *independent* noise, so the statistic measures what seed noise alone produces; with the same
  noise the arms would be identical by construction and prove nothing.

:func:`measure_control` returns a :class:`ControlResult`; ``n`` sets the boxes per check (the
CI test on the shipped weights uses a few; ``bench run`` uses at least 30).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import report_bbox
import torch
from scipy import ndimage, stats

from .data import crop_around, organ_depth
from .stages import linet_sample, lmnet_sample

__all__ = ["ControlResult", "HeldOutBox", "held_out_boxes", "measure_control"]

_HELD_OUT_STREAM = 7_000_003  # seed offset: training crops use seeds (seed, i) with small seeds
_ORGANS = ("liver", "kidney", "pancreas")
DENSITIES = ("hypodense", "isodense", "hyperdense")


@dataclass(frozen=True)
class HeldOutBox:
    """One held-out box on the model grid.

    Attributes:
        ct: (1, 1, S, S, S) HU.
        organs: (1, 1, S, S, S) int64 ids.
        target: (1, 1, S, S, S) bool target organ.
        bbox: (1, 1, S, S, S) bool box.
        spacing: model spacing (mm).
        report: base report (round-like, hypodense, ...) whose size is the box extent.
        template: template name.
    """

    ct: torch.Tensor
    organs: torch.Tensor
    target: torch.Tensor
    bbox: torch.Tensor
    spacing: float
    report: report_bbox.Report
    template: str


def held_out_boxes(
    templates: Sequence[Any], preset: Any, n: int, *, seed: int = 0
) -> list[HeldOutBox]:
    """``n`` boxes in liver / kidney / pancreas of the templates (seeded, disjoint from training seeds)."""
    from ..rulesynth._rules import ORGAN_IDS

    pools = [(t, o) for t in templates for o in _ORGANS if t.has_organ(o, min_voxels=400)]
    if not pools:
        raise ValueError(f"no template has any of {_ORGANS}; control boxes need one of them")
    s = preset.crop_size
    out: list[HeldOutBox] = []
    i = 0
    while len(out) < n and i < 50 * n:
        rng = np.random.default_rng([seed + _HELD_OUT_STREAM, i])
        i += 1
        t, organ = pools[int(rng.integers(len(pools)))]
        diam = rng.uniform(12.0, 35.0, size=3)
        depth = organ_depth(t, organ)
        cand = np.argwhere(depth >= 0.5 * diam.max())
        if len(cand) == 0:
            continue
        centre = cand[int(rng.integers(len(cand)))].astype(np.float64)
        step = preset.model_spacing(tuple(diam))
        ct = crop_around(t.ct, t.spacing, centre, step, s, order=1, cval=-1000.0)
        org = crop_around(t.organs.astype(np.int16), t.spacing, centre, step, s, order=0, cval=0)
        tgt = np.isin(org, ORGAN_IDS[organ])
        half = np.maximum(np.round(diam / step / 2.0), 2).astype(int)
        c = s // 2
        box = np.zeros((s, s, s), bool)
        box[c - half[0] : c + half[0], c - half[1] : c + half[1], c - half[2] : c + half[2]] = True
        if not tgt[box].mean() > 0.9:
            continue
        size = tuple(float(2 * h * step) for h in half)
        rep = report_bbox.Report(
            shape="round-like",
            organ=organ,
            lesion_location="within the parenchymal organ",
            size=size,
            relationship_with_surrounding_organs="no close relationship with surrounding organs",
            surface_characteristics="well-defined margin",
            specific_features="none",
            enhancement_status="non-contrast CT",
            density="hypodense",
            density_variations="homogeneous",
        )
        as5 = lambda a, dt: torch.from_numpy(np.ascontiguousarray(a)).to(dt)[None, None]  # noqa: E731
        out.append(
            HeldOutBox(
                ct=as5(ct, torch.float32),
                organs=as5(org, torch.int64),
                target=as5(tgt, torch.bool),
                bbox=as5(box, torch.bool),
                spacing=float(step),
                report=rep,
                template=t.name,
            )
        )
    if len(out) < n:
        raise ValueError(f"could place only {len(out)} of {n} held-out boxes in the templates")
    return out


@dataclass
class ControlResult:
    """Numbers of one control measurement (see the module docstring).

    Attributes:
        n_shape: boxes in the LMNet check (pairs).
        sphericity_round / sphericity_irregular: mean sphericity per prompt.
        sphericity_gap: mean paired difference round - irregular.
        shape_p: one-sided Wilcoxon p-value (round > irregular).
        shape_pairs_right: fraction of pairs with round > irregular.
        null_sphericity_gap / null_shape_p: the same with the null context (independent noise).
        size_within_30: fraction of masks whose mean relative axis error vs the request is <= 0.3.
        n_density: boxes in the LINet check.
        delta_hu: mean lesion-minus-organ HU per density prompt.
        ordered_fraction: fraction of boxes with hypo < iso < hyper.
        pair_fractions: per pair ("hypo<iso", "iso<hyper", "hypo<hyper") the fraction in order.
        null_delta_hu / null_ordered_fraction / null_pair_fractions: the null-context arms.
        guidance_lmnet / guidance_linet / steps: sampling settings used.
        per_case: raw values for reports.
    """

    n_shape: int
    sphericity_round: float
    sphericity_irregular: float
    sphericity_gap: float
    shape_p: float
    shape_pairs_right: float
    null_sphericity_gap: float
    null_shape_p: float
    size_within_30: float
    n_density: int
    delta_hu: dict[str, float]
    ordered_fraction: float
    pair_fractions: dict[str, float]
    null_delta_hu: dict[str, float]
    null_ordered_fraction: float
    null_pair_fractions: dict[str, float]
    guidance_lmnet: float
    guidance_linet: float
    steps: int
    per_case: dict[str, Any] = field(default_factory=dict)

    @property
    def shape_passes(self) -> bool:
        """Sphericity round > irregular with p < 0.01."""
        return self.shape_p < 0.01 and self.sphericity_gap > 0

    @property
    def density_passes(self) -> bool:
        """hypo < iso < hyper in at least 90 % of the pairs (each pairwise order)."""
        return min(self.pair_fractions.values()) >= 0.9

    @property
    def size_passes(self) -> bool:
        """At least 80 % of masks within 30 % of the requested size."""
        return self.size_within_30 >= 0.8

    @property
    def ablation_holds(self) -> bool:
        """With the null context the gaps are gone (shape p >= 0.01; no pair order >= 90 %)."""
        return self.null_shape_p >= 0.01 and max(self.null_pair_fractions.values()) < 0.9

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, with the pass flags."""
        d = dataclasses.asdict(self)
        d.update(
            shape_passes=self.shape_passes,
            density_passes=self.density_passes,
            size_passes=self.size_passes,
            ablation_holds=self.ablation_holds,
        )
        return d

    def summary(self) -> str:
        """A few lines for logs and model cards."""
        dh = ", ".join(f"{k} {v:+.1f}" for k, v in self.delta_hu.items())
        ndh = ", ".join(f"{k} {v:+.1f}" for k, v in self.null_delta_hu.items())
        pf = ", ".join(f"{k} {100 * v:.0f}%" for k, v in self.pair_fractions.items())
        npf = ", ".join(f"{k} {100 * v:.0f}%" for k, v in self.null_pair_fractions.items())
        return (
            f"LMNet shape (n={self.n_shape} pairs, same noise): sphericity round-like {self.sphericity_round:.3f} vs "
            f"irregular {self.sphericity_irregular:.3f}, gap {self.sphericity_gap:+.3f}, p={self.shape_p:.2g}, "
            f"{100 * self.shape_pairs_right:.0f}% of pairs in order; null context gap {self.null_sphericity_gap:+.3f} "
            f"p={self.null_shape_p:.2g}\n"
            f"size within 30% of the request: {100 * self.size_within_30:.0f}%\n"
            f"LINet density (n={self.n_density}, same noise): lesion-minus-organ HU {dh}; ordered "
            f"{100 * self.ordered_fraction:.0f}% ({pf}); null context: {ndh}; ordered "
            f"{100 * self.null_ordered_fraction:.0f}% ({npf})"
        )


def _with(report: report_bbox.Report, **kw: Any) -> report_bbox.Report:
    d = report.to_dict()
    d.update(kw)
    return report_bbox.Report.from_dict(d)


def _sphericity(mask: np.ndarray) -> float:
    import shape_metrics

    return float(shape_metrics.sphericity(mask.astype(bool), (1.0, 1.0, 1.0)))


def _size_error(mask: np.ndarray, box: np.ndarray) -> float:
    ext = np.ptp(np.argwhere(mask), axis=0) + 1
    req = np.ptp(np.argwhere(box), axis=0) + 1
    return float(np.mean(np.abs(ext - req) / req))


def _delta_hu(hu: np.ndarray, mask: np.ndarray, foot: np.ndarray, organ: np.ndarray) -> float:
    ring = (
        ndimage.binary_dilation(foot, iterations=4)
        & ~ndimage.binary_dilation(foot, iterations=1)
        & organ
    )
    if ring.sum() < 10:
        ring = organ & ~foot
    return float(np.median(hu[mask]) - np.median(hu[ring]))


def _one_sided_p(diff: np.ndarray) -> float:
    if not np.isfinite(diff).all():
        return float("nan")
    if np.allclose(diff, 0):
        return 1.0
    return float(stats.wilcoxon(diff, alternative="greater").pvalue)


def _ellipsoid(box: np.ndarray) -> np.ndarray:
    idx = np.argwhere(box)
    lo, hi = idx.min(0), idx.max(0)
    c, r = (lo + hi) / 2.0, (hi - lo + 1) / 2.0
    g = np.indices(box.shape).astype(np.float64)
    return (sum(((g[i] - c[i]) / r[i]) ** 2 for i in range(3)) <= 1.0) & box


def _stack(boxes: Sequence[HeldOutBox], name: str) -> torch.Tensor:
    return torch.cat([getattr(b, name) for b in boxes])


@torch.no_grad()
def measure_control(
    system: Any,
    *,
    n: int = 30,
    seed: int = 0,
    templates: Sequence[Any] | None = None,
    steps: int | None = None,
    guidance_lmnet: float | None = None,
    guidance_linet: float | None = None,
    batch: int = 16,
    parts: Sequence[str] = ("shape", "density"),
    threshold_variants: Sequence[float | str] = (),
    null: bool = True,
) -> ControlResult:
    """Measure text control of ``system`` on ``n`` held-out boxes (see the module docstring).

    Args:
        system: a ``LesionDiffusionSystem``.
        n: boxes per check (pairs for shape, triples for density).
        seed: seed of the boxes and of the noise.
        templates: ``ctsynth_bench.rulesynth.Template`` objects (default: the bundled ones).
        steps: DDIM steps (default: the preset's).
        guidance_lmnet: LMNet CFG scale (default: the preset's).
        guidance_linet: LINet CFG scale (default: the preset's).
        batch: boxes per network call.
        parts: which checks to run (``"shape"``, ``"density"``).
        null: also run the null-context ablation (NaN when skipped).
        threshold_variants: other LMNet thresholds to score on the same outputs (recorded in
            ``per_case["threshold_variants"]``; the headline numbers use the preset's).

    Returns:
        :class:`ControlResult` (a skipped part holds NaN).
    """
    from ..rulesynth import load_templates

    p = system.preset
    tmpl = list(templates) if templates is not None else load_templates(["abdomen", "chest"])
    boxes = held_out_boxes(tmpl, p, n, seed=seed)
    g_lm = p.lmnet_guidance if guidance_lmnet is None else guidance_lmnet
    g_li = p.guidance if guidance_linet is None else guidance_linet
    dev = system.device
    nan = float("nan")
    per: dict[str, Any] = {"templates": [b.template for b in boxes]}

    def gen(tag: int, j: int) -> torch.Generator:
        return torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + tag * 10_007 + j)

    def run_lmnet(reports: list[report_bbox.Report], text: bool, tag: int) -> list[torch.Tensor]:
        probs = []
        for j in range(0, len(boxes), batch):
            bb = boxes[j : j + batch]
            ctx = torch.cat([system.tokens(r, "mask", text=text) for r in reports[j : j + batch]])
            prob = lmnet_sample(
                system.lmnet,
                preset=p,
                organs=_stack(bb, "organs").to(dev),
                target=_stack(bb, "target").float().to(dev),
                bbox=_stack(bb, "bbox").float().to(dev),
                context=ctx,
                noise_generator=gen(tag, j),
                steps=steps,
                guidance=g_lm,
            )
            probs.extend(prob[k : k + 1].cpu() for k in range(len(bb)))
        return probs

    def run_linet(reports: list[report_bbox.Report], text: bool, tag: int) -> list[float]:
        deltas = []
        for j in range(0, len(boxes), batch):
            bb = boxes[j : j + batch]
            ell = torch.from_numpy(np.stack([_ellipsoid(b.bbox[0, 0].numpy()) for b in bb]))[
                :, None
            ]
            ctx = torch.cat([system.tokens(r, "image", text=text) for r in reports[j : j + batch]])
            hu, foot = linet_sample(
                system.linet,
                preset=p,
                codec=system.codec,
                ct=_stack(bb, "ct").to(dev),
                mask=ell.to(dev),
                context=ctx,
                noise_generator=gen(tag, j),
                steps=steps,
                guidance=g_li,
            )
            for k, b in enumerate(bb):
                deltas.append(
                    _delta_hu(
                        hu[k, 0].cpu().numpy(),
                        ell[k, 0].numpy(),
                        foot[k, 0].cpu().numpy(),
                        b.target[0, 0].numpy(),
                    )
                )
        return deltas

    # ---- LMNet shape
    sph_r = sph_i = gap = p_shape = right = null_gap = null_p = size_ok = nan
    if "shape" in parts:
        rr = [_with(b.report, shape="round-like") for b in boxes]
        ri = [_with(b.report, shape="irregular") for b in boxes]
        p_r, p_i = run_lmnet(rr, True, 1), run_lmnet(ri, True, 1)  # same tag: same noise
        # null context, independent noise (see the module docstring)
        n_r, n_i = (run_lmnet(rr, False, 2), run_lmnet(ri, False, 3)) if null else (p_r, p_i)
        variants = {}
        for th in dict.fromkeys([p.lmnet_threshold, *threshold_variants]):
            m_r = [system_binarize(system, q, b, th) for q, b in zip(p_r, boxes, strict=True)]
            m_i = [system_binarize(system, q, b, th) for q, b in zip(p_i, boxes, strict=True)]
            s_r = np.array([_sphericity(m) for m in m_r])
            s_i = np.array([_sphericity(m) for m in m_i])
            diff = s_r - s_i
            nd = np.array(
                [
                    _sphericity(system_binarize(system, a, b, th))
                    - _sphericity(system_binarize(system, c, b, th))
                    for a, c, b in zip(n_r, n_i, boxes, strict=True)
                ]
                if null
                else [np.nan]
            )
            errs = [
                _size_error(m, b.bbox[0, 0].numpy())
                for m, b in zip(m_r + m_i, boxes + boxes, strict=True)
            ]
            variants[str(th)] = {
                "sphericity_round": float(s_r.mean()),
                "sphericity_irregular": float(s_i.mean()),
                "gap": float(diff.mean()),
                "p": _one_sided_p(diff),
                "pairs_right": float((diff > 0).mean()),
                "null_gap": float(nd.mean()),
                "null_p": _one_sided_p(nd),
                "size_within_30": float(np.mean(np.array(errs) <= 0.3)),
                "per_round": s_r.tolist(),
                "per_irregular": s_i.tolist(),
                "size_error": errs,
                "null_diff": nd.tolist(),
            }
        v = variants[str(p.lmnet_threshold)]
        sph_r, sph_i, gap, p_shape, right = (
            v["sphericity_round"],
            v["sphericity_irregular"],
            v["gap"],
            v["p"],
            v["pairs_right"],
        )
        null_gap, null_p, size_ok = v["null_gap"], v["null_p"], v["size_within_30"]
        per["threshold_variants"] = variants

    # ---- LINet density
    dh: dict[str, float] = {}
    ndh: dict[str, float] = {}
    ordered = null_ordered = nan
    pf: dict[str, float] = {}
    npf: dict[str, float] = {}
    if "density" in parts:
        vals, nvals = {}, {}
        for k, dens in enumerate(DENSITIES):
            reps = [_with(b.report, density=dens) for b in boxes]
            vals[dens] = np.array(run_linet(reps, True, 10))  # same noise for all three prompts
            if null:  # null context: independent noise per prompt
                nvals[dens] = np.array(run_linet(reps, False, 20 + k))
            else:
                nvals[dens] = np.full(len(boxes), np.nan)
        dh = {k: float(v.mean()) for k, v in vals.items()}
        ndh = {k: float(v.mean()) for k, v in nvals.items()}

        def orders(v: dict[str, np.ndarray]) -> tuple[float, dict[str, float]]:
            a, b, c = v["hypodense"], v["isodense"], v["hyperdense"]
            return float(((a < b) & (b < c)).mean()), {
                "hypo<iso": float((a < b).mean()),
                "iso<hyper": float((b < c).mean()),
                "hypo<hyper": float((a < c).mean()),
            }

        ordered, pf = orders(vals)
        null_ordered, npf = orders(nvals)
        per.update(
            delta_hu={k: v.tolist() for k, v in vals.items()},
            null_delta_hu={k: v.tolist() for k, v in nvals.items()},
        )

    return ControlResult(
        n_shape=n if "shape" in parts else 0,
        sphericity_round=sph_r,
        sphericity_irregular=sph_i,
        sphericity_gap=gap,
        shape_p=p_shape,
        shape_pairs_right=right,
        null_sphericity_gap=null_gap,
        null_shape_p=null_p,
        size_within_30=size_ok,
        n_density=n if "density" in parts else 0,
        delta_hu=dh,
        ordered_fraction=ordered,
        pair_fractions=pf,
        null_delta_hu=ndh,
        null_ordered_fraction=null_ordered,
        null_pair_fractions=npf,
        guidance_lmnet=g_lm,
        guidance_linet=g_li,
        steps=steps or p.steps,
        per_case=per,
    )


def system_binarize(
    system: Any, prob: torch.Tensor, box: HeldOutBox, threshold: float | str | None = None
) -> np.ndarray:
    """Binarize one LMNet probability map as the system does (threshold, largest component)."""
    from .stages import binarize

    th = system.preset.lmnet_threshold if threshold is None else threshold
    m = (
        binarize(prob.cpu(), system.target_voxels(box.report, box.bbox), th)[0, 0]
        .numpy()
        .astype(bool)
    )
    if not m.any():  # keep the statistic defined: an empty mask counts as one voxel at the centre
        m = np.zeros(m.shape, bool)
        m[tuple(s // 2 for s in m.shape)] = True
    return m
