"""Measure a synthesized lesion set and compare every attribute value with its documented rule.

For each case the report is read back as a typed ``report_bbox.Report`` and reduced to rendering
categories (``_rules.spec_from_report``),
and the written image, lesion mask and organ map are measured independently of the renderer's
drawn parameters: shape (sphericity, solidity from shape-metrics), HU statistics of the lesion
core and of the surrounding organ, CT noise, edge contrast, volume, foci fractions. Each measured
quantity that a rule of the case's attribute values constrains is checked against the rule's
range; :func:`summarize` gives, per attribute value, the distribution next to the rule and the
fraction of cases that agree.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import report_bbox
from scipy import ndimage
from shape_metrics import solidity, sphericity

from ._render import estimate_noise, reference_hu
from ._rules import HOLLOW, ORGAN_IDS, RULES, LesionSpec, Rule, SynthError, spec_from_report

#: Shape descriptors need enough voxels to mean anything.
MIN_SHAPE_VOXELS = 30
QUANTITIES: tuple[str, ...] = (
    "sphericity", "solidity", "delta_hu", "mean_hu", "std_ratio", "edge", "volume_ml", "hot_fraction",
    "cold_fraction",
)


@dataclass
class CaseMeasure:
    """Measured quantities of one case (``None`` where a quantity is undefined) and its spec."""

    case: str
    spec: LesionSpec
    values: dict[str, float | None] = field(default_factory=dict)


def measure_case(
    ct: np.ndarray, lesion: np.ndarray, organs: np.ndarray, spacing: Sequence[float], spec: LesionSpec, *, case: str = ""
) -> CaseMeasure:
    """Measure one lesion (see the module docstring of ``_rules`` for each quantity's definition)."""
    m = lesion > 0
    if not m.any():
        raise SynthError(f"case {case!r}: the lesion label is empty")
    idx = np.argwhere(m)
    pad = 6
    lo = np.maximum(idx.min(0) - pad, 0)
    hi = np.minimum(idx.max(0) + pad + 1, m.shape)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    mc, cc = m[sl], ct[sl].astype(np.float64)
    organ_full = np.isin(organs, ORGAN_IDS[spec.organ]) & ~m
    organ = organ_full[sl]
    sp = tuple(float(s) for s in spacing)
    vals: dict[str, float | None] = {q: None for q in QUANTITIES}
    n = int(mc.sum())
    vals["volume_ml"] = n * float(np.prod(sp)) / 1000.0
    if n >= MIN_SHAPE_VOXELS:
        vals["sphericity"] = sphericity(mc, sp)
        vals["solidity"] = solidity(mc, sp)
    din = ndimage.distance_transform_edt(mc)
    dout = ndimage.distance_transform_edt(~mc)
    core = mc & (din >= 2)
    if core.sum() < 4:
        core = mc
    lesion_vals = cc[core]
    mean_hu = float(np.median(lesion_vals))
    vals["mean_hu"] = mean_hu
    if spec.organ in HOLLOW:
        ref = reference_hu(ct, organ_full, spec.organ)
    else:
        interior = ndimage.binary_erosion(organ_full[sl] | mc, iterations=1) & organ
        ring = interior & (dout <= 4)
        if ring.sum() < 5:
            ring = organ & (dout <= 4)
        ref = float(np.median(cc[ring])) if ring.sum() >= 5 else reference_hu(ct, organ_full, spec.organ)
    vals["delta_hu"] = mean_hu - ref
    # Template noise: measured on the output image in soft tissue away from the lesion.
    parench = np.isin(organs, (5, 1, 2, 3)) & ~ndimage.binary_dilation(m, iterations=3)
    if parench.sum() < 200:
        parench = (ct > -150) & (ct < 150) & ~ndimage.binary_dilation(m, iterations=3)
    noise = estimate_noise(ct, parench)
    if lesion_vals.size >= 4:
        robust = 1.4826 * float(np.median(np.abs(lesion_vals - np.median(lesion_vals))))
        vals["std_ratio"] = robust / noise
    if spec.organ not in HOLLOW and spec.location != "wall":
        # Edge sharpness: how much of the lesion contrast the first voxel outside still carries.
        near = organ if organ.sum() >= 20 else ~mc
        out1 = near & (dout <= 1)
        far = near & (dout > 3) & (dout <= 5)
        inner = mc & (din >= 2)
        if inner.sum() < 4:
            inner = mc
        if out1.sum() >= 10 and far.sum() >= 10:
            base = float(np.median(cc[far]))
            contrast = float(np.median(cc[inner])) - base
            spread = 1.4826 * float(np.median(np.abs(cc[inner] - np.median(cc[inner]))))
            if abs(contrast) >= 2.5 * max(noise, spread):
                vals["edge"] = 1.0 - (float(cc[out1].mean()) - base) / contrast
    med = float(np.median(cc[mc]))
    vals["hot_fraction"] = float((cc[mc] > med + 80.0).mean())
    vals["cold_fraction"] = float((cc[mc] < med - 25.0).mean())
    return CaseMeasure(case=case, spec=spec, values=vals)


def _rules_of(spec: LesionSpec) -> list[Rule]:
    rules: list[Rule] = []
    by_key = {(r.attribute, r.value): r for r in RULES}
    for attr, value in (("shape", spec.shape), ("density", spec.density), ("variation", spec.variation),
                        ("margin", spec.margin), ("enhancement", spec.enhancement)):
        rules.append(by_key[(attr, value)])
    rules.extend(by_key[("feature", f)] for f in spec.features)
    return rules


def _applicable(rule: Rule, quantity: str, spec: LesionSpec) -> bool:
    """Precedence between rules that constrain the same quantity (documented in SYNTH.md)."""
    if rule.attribute == "shape" and quantity in ("sphericity", "solidity") and "spiculated" in spec.features:
        return False  # spicules take precedence over the base shape's compactness
    if rule.attribute == "variation" and spec.density == "stone":
        return False  # stones are rendered homogeneous at any stated variation
    if rule.attribute == "variation" and rule.value == "homogeneous" and spec.features:
        return False  # foci make a lesion heterogeneous on purpose
    if rule.attribute == "margin" and spec.density == "stone":
        return False  # stones always have a sharp edge
    return True


@dataclass
class RuleCheck:
    """Agreement of one (attribute value, quantity) with its rule over a set of cases."""

    attribute: str
    value: str
    quantity: str
    rule: tuple[float, float]
    measured: list[float]

    @property
    def agreement(self) -> float:
        """Fraction of measured cases inside the rule's range (``nan`` when none)."""
        if not self.measured:
            return float("nan")
        lo, hi = self.rule
        return float(np.mean([lo <= v <= hi for v in self.measured]))


def check_rules(measures: Iterable[CaseMeasure]) -> list[RuleCheck]:
    """Group the measured quantities by (attribute value, quantity) and compare them with the rules."""
    table: dict[tuple[str, str, str], RuleCheck] = {}
    enh: dict[tuple[str, str], list[float]] = {}
    for cm in measures:
        for rule in _rules_of(cm.spec):
            for quantity in rule.measures:
                value = cm.values.get(quantity)
                if value is None or not _applicable(rule, quantity, cm.spec):
                    continue
                key = (rule.attribute, rule.value, quantity)
                if key not in table:
                    table[key] = RuleCheck(rule.attribute, rule.value, quantity, getattr(rule, quantity), [])
                table[key].measured.append(float(value))
        if cm.spec.density in ("hypo", "hyper") and cm.values.get("delta_hu") is not None:
            enh.setdefault((cm.spec.density, cm.spec.enhancement), []).append(float(cm.values["delta_hu"]))  # type: ignore[arg-type]
    # Enhancement: difference of mean delta HU between enhanced and non-contrast, per density.
    for density in ("hypo", "hyper"):
        a, b = enh.get((density, "enhanced")), enh.get((density, "non_contrast"))
        if a and b:
            diff = float(np.mean(a) - np.mean(b))
            table[("enhancement", "enhanced", f"shift_{density}")] = RuleCheck(
                "enhancement", "enhanced", f"delta_hu shift ({density})", (0.0, 30.0), [diff])
    return list(table.values())


def load_and_measure(root: str | Path, *, progress: bool = False) -> list[CaseMeasure]:
    """Measure every case of a dataset written by :func:`synthesize_dataset`."""
    from tqdm.auto import tqdm

    from ..data import read_nifti
    from ._dataset import _read_json

    root = Path(root)
    if not root.is_dir():
        raise SynthError(f"{root}: no such folder; give a set written by 'bench data lesions'")
    if (root / "dataset.json").is_file():
        _read_json(root / "dataset.json", dict)  # a broken layout is named, not measured
    reports = sorted((root / "reports").glob("*.json")) if (root / "reports").is_dir() else []
    if not reports:
        raise SynthError(f"{root} holds no reports/*.json; is it a dataset written by 'bench data lesions'?")
    out: list[CaseMeasure] = []
    for path in tqdm(reports, desc="measuring", disable=not progress):
        case = path.stem
        meta = _read_json(path, dict)
        missing = [k for k in ("report", "lesion_type") if k not in meta]
        if missing:
            raise SynthError(f"{path}: the report file has no {' or '.join(missing)!r}")
        try:
            report = report_bbox.Report.from_dict(meta["report"])
            spec = spec_from_report(report, lesion_type=meta["lesion_type"])
        except (report_bbox.ReportError, SynthError, TypeError) as exc:
            raise SynthError(f"{path}: the report is not valid: {exc}") from None
        ct, affine = read_nifti(root / "imagesTr" / f"{case}_0000.nii.gz")
        lesion, _ = read_nifti(root / "labelsTr" / f"{case}.nii.gz")
        organs, _ = read_nifti(root / "organs" / f"{case}.nii.gz")
        for name, arr in (("labelsTr", lesion), ("organs", organs)):
            if arr.shape != ct.shape:
                raise SynthError(
                    f"{root / name / (case + '.nii.gz')}: shape {arr.shape} differs from the image "
                    f"{ct.shape}"
                )
        spacing = tuple(float(v) for v in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
        out.append(measure_case(ct.astype(np.float32), lesion, organs, spacing, spec, case=case))
    return out


def type_agreement(measures: Iterable[CaseMeasure]) -> dict[str, tuple[int, int, int]]:
    """Per lesion type: ``(cases, rule checks made, rule checks passed)`` over its cases."""
    out: dict[str, list[int]] = {}
    for cm in measures:
        row = out.setdefault(cm.spec.lesion_type, [0, 0, 0])
        row[0] += 1
        for rule in _rules_of(cm.spec):
            for quantity in rule.measures:
                value = cm.values.get(quantity)
                if value is None or not _applicable(rule, quantity, cm.spec):
                    continue
                lo, hi = getattr(rule, quantity)
                row[1] += 1
                row[2] += int(lo <= value <= hi)
    return {k: (v[0], v[1], v[2]) for k, v in sorted(out.items())}


def summarize(checks: Sequence[RuleCheck]) -> str:
    """A plain-text table: attribute value, quantity, n, median [5 %, 95 %], rule range, agreement."""
    lines = [f"{'attribute':<12}{'value':<18}{'quantity':<24}{'n':>4}  {'median [p5, p95]':<28}{'rule':<20}agree"]
    for c in sorted(checks, key=lambda c: (c.attribute, c.value, c.quantity)):
        arr = np.asarray(c.measured)
        dist = f"{np.median(arr):.3g} [{np.percentile(arr, 5):.3g}, {np.percentile(arr, 95):.3g}]"
        rule = f"[{c.rule[0]:.3g}, {c.rule[1]:.3g}]"
        lines.append(f"{c.attribute:<12}{c.value:<18}{c.quantity:<24}{len(arr):>4}  {dist:<28}{rule:<20}"
                     f"{100 * c.agreement:5.1f}%")
    return "\n".join(lines)
