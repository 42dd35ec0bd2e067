import numpy as np
import pytest
from report_bbox import (
    LESION_TYPES,
    ORGANS,
    VOCABULARY,
    Report,
    ReportError,
    check_report_fits,
    rule_violations,
    sample_report,
)

FOURTEEN = {
    "gallstone",
    "kidney_stone",
    "liver_cyst",
    "pancreas_cyst",
    "kidney_cyst",
    "esophageal_cancer",
    "gallbladder_cancer",
    "lung_cancer",
    "liver_cancer",
    "pancreas_cancer",
    "kidney_cancer",
    "stomach_cancer",
    "colon_cancer",
    "bladder_cancer",
}


def test_table_has_the_fourteen_types():
    assert set(LESION_TYPES) == FOURTEEN
    organs = {s.organ for s in LESION_TYPES.values()}
    assert organs == {
        "gallbladder",
        "kidney",
        "liver",
        "pancreas",
        "esophagus",
        "lung",
        "stomach",
        "colon",
        "urinary_bladder",
    }


@pytest.mark.parametrize("name", sorted(FOURTEEN))
def test_samples_follow_the_table(name):
    spec = LESION_TYPES[name]
    rng = np.random.default_rng(1)
    for _ in range(30):
        r = sample_report(rng, lesion_type=name)
        assert r.lesion_type == name and r.organ in spec.organs
        for attr in VOCABULARY:
            if attr != "organ_type":
                assert getattr(r, attr) in spec.allowed(attr), attr
        assert spec.size_mm[0] * 0.99 <= max(r.size) <= spec.size_mm[1] * 1.01
        assert not rule_violations({a: getattr(r, a) for a in VOCABULARY})
        assert not check_report_fits(r)


def test_medical_rules():
    rng = np.random.default_rng(2)
    stone = sample_report(rng, lesion_type="gallstone")
    assert (stone.shape, stone.density, stone.density_variations, stone.lesion_location) == (
        stone.shape,
        "hyperdense",
        "homogeneous",
        "within the lumen of a hollow organ",
    )
    assert stone.shape in ("punctate", "round-like")
    cyst = sample_report(rng, lesion_type="liver_cyst")
    assert (
        cyst.density_variations == "homogeneous"
        and cyst.surface_characteristics == "well-defined margin"
    )
    for _ in range(20):
        c = sample_report(rng, lesion_type="colon_cancer")
        if c.shape in ("irregular wall thickening", "luminal narrowing"):
            assert c.lesion_location == "wall thickening"


def test_deterministic():
    a = [sample_report(np.random.default_rng(7)) for _ in range(3)]
    assert a[0] == a[1] == a[2]


def test_fixed_values_honoured():
    rng = np.random.default_rng(3)
    r = sample_report(rng, organ="bladder", density="isoattenuating", size="30 mm")
    assert r.organ == "urinary_bladder" and r.density == "isodense" and r.size == (30.0, 30.0, 30.0)
    r = sample_report(rng, organ="kidney_left", specific_features="calculus")
    assert r.lesion_type == "kidney_stone" and r.organ == "kidney_left"
    r = sample_report(rng, **{"lesion location": "wall thickening"}, organ="stomach")
    assert r.lesion_location == "wall thickening" and r.lesion_type == "stomach_cancer"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(lesion_type="gallstone", density="hypodense"), "gallstone allows density"),
        (dict(organ="spleen"), "allows organ"),
        (dict(lesion_type="liver_cyst", size="300 mm"), "outside the liver_cyst range"),
        (dict(shape="luminal narrowing", lesion_location="within the lumen"), "contradict"),
        (dict(lesion_type="gallstne"), "did you mean 'gallstone'"),
        (dict(densty="hypodense"), "unknown attribute"),
    ],
)
def test_fixed_values_rejected_with_reason(kwargs, match):
    with pytest.raises(ReportError, match=match):
        sample_report(np.random.default_rng(0), **kwargs)


def test_check_report_fits_catches_oversize():
    r = Report(
        shape="punctate",
        lesion_location="within the lumen",
        organ="gallbladder",
        size=90,
        relationship_with_surrounding_organs="no close relationship",
        surface_characteristics="well-defined margin",
        specific_features="stone",
        enhancement_status="enhanced CT",
        density="hyperdense",
        density_variations="homogeneous",
    )
    problems = check_report_fits(r, "gallstone")
    assert any("does not fit the gallbladder" in p for p in problems)
    assert any("outside the gallstone range" in p for p in problems)
    assert ORGANS["gallbladder"].max_lesion_mm == 60
