"""A generated set agrees with the documented rule table (what ``bench data lesions --stats`` prints)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
from ctsynth_bench.rulesynth import (
    LESION_TYPES,
    RULES,
    check_rules,
    load_and_measure,
    summarize,
    synthesize_dataset,
    type_agreement,
)

sys.path.insert(0, str(Path(__file__).parent))
from test_rulesynth import make_phantom


def test_rule_table_covers_every_attribute_value() -> None:
    from ctsynth_bench.rulesynth._rules import DENSITIES, FEATURES, SHAPES

    have = {(r.attribute, r.value) for r in RULES}
    for attr, values in (("shape", SHAPES), ("density", DENSITIES), ("feature", FEATURES),
                         ("variation", ("homogeneous", "heterogeneous")),
                         ("margin", ("well_defined", "ill_defined")), ("enhancement", ("enhanced", "non_contrast"))):
        for v in values:
            assert (attr, v) in have, (attr, v)
    for r in RULES:
        for q in r.measures:
            lo, hi = getattr(r, q)
            assert lo < hi


def test_generated_set_agrees_with_rules(tmp_path) -> None:
    phantom = make_phantom(seed=11)
    out = tmp_path / "set"
    summary = synthesize_dataset(out, n=42, templates=[phantom], seed=3)
    assert summary.failed == 0 and set(summary.counts) == set(LESION_TYPES)  # all 14 types, 3 each
    measures = load_and_measure(out)
    checks = check_rules(measures)
    table = summarize(checks)
    measured = [c for c in checks if not math.isnan(c.agreement)]
    quantities = {(c.attribute, c.value) for c in measured}
    for needed in (("shape", "round"), ("shape", "wall_thickening"), ("density", "fluid"), ("density", "stone"),
                   ("density", "hypo"), ("variation", "homogeneous"), ("margin", "well_defined")):
        assert needed in quantities, f"{needed} never measured:\n{table}"
    n_total = sum(len(c.measured) for c in measured)
    overall = sum(c.agreement * len(c.measured) for c in measured) / n_total
    assert overall >= 0.9, table
    per_type = type_agreement(measures)
    assert set(per_type) == set(LESION_TYPES)
    for name, (cases, made, passed) in per_type.items():
        assert cases == 3 and made > 0 and passed / made >= 0.8, f"{name}: {passed}/{made} checks\n{table}"
    for c in measured:
        if len(c.measured) >= 3:
            assert c.agreement >= 0.66, f"{c.attribute}={c.value} {c.quantity}:\n{table}"


def test_real_abdomen_template(tmp_path) -> None:
    from ctsynth_bench.rulesynth import load_templates, synthesize_case

    (tmpl,) = load_templates(["abdomen"])
    for i, t in enumerate(("liver_cyst", "kidney_stone", "colon_cancer")):
        sc = synthesize_case(tmpl, t, np.random.default_rng(i))
        assert sc.lesion.sum() > 0 and sc.ct.shape == tmpl.ct.shape
