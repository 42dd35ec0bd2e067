import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from report_bbox import (
    ATTRIBUTES,
    IMAGE_ATTRIBUTES,
    LESION_ORGANS,
    MASK_ATTRIBUTES,
    VOCABULARY,
    Report,
    ReportError,
    canonical_value,
)

BASE = {
    "shape": "irregular",
    "lesion location": "within the parenchymal organ",
    "organ": "liver",
    "size": "28x29x26 mm",
    "relationship with surrounding organs": "no close relationship with surrounding organs",
    "surface characteristics": "ill-defined margin",
    "specific features": "decreased-density areas",
    "enhancement status": "enhanced CT",
    "density": "hypodense",
    "density variations": "heterogeneous",
}

# The authors' demo/Liver_cancer/type.json (LesionDiffusion, pipeline/demo).
LEGACY = {
    "5": [
        "irregular,",
        "",
        {
            "enhancement status": "enhanced CT,",
            "lesion location": "5",
            "shape": "irregular,",
            "size": "[[28 29 26]] pixel,",
            "density": "low density lesion,",
            "density variations": "heterogeneous,",
            "CT value": "Mean density of the lesion region is approximately 57 HU,",
            "surface characteristics": "ill-defined margin,",
            "relationship with adjacent organs": "no close relationship with surrounding organs,",
            "specific features": "presence of increased density areas,presence of decreased density areas,",
        },
        [[[261, 179, 107]], [[28, 29, 26]]],
    ]
}

ALL_SYNONYMS = [
    (a, c, s) for a, g in VOCABULARY.items() for c, syns in g.items() for s in (c, *syns)
]


def test_eleven_attributes_split():
    assert len(ATTRIBUTES) == 11
    assert len(MASK_ATTRIBUTES) == 8 and len(IMAGE_ATTRIBUTES) == 8
    assert set(MASK_ATTRIBUTES) & set(IMAGE_ATTRIBUTES) == {
        "organ",
        "size",
        "relationship_with_surrounding_organs",
        "surface_characteristics",
        "specific_features",
    }


@pytest.mark.parametrize(("attr", "canonical", "synonym"), ALL_SYNONYMS)
def test_every_synonym_round_trips(attr, canonical, synonym):
    assert canonical_value(attr, synonym) == canonical
    assert canonical_value(attr, synonym.upper() + ",") == canonical
    if attr in ("organ_type",):
        return
    data = dict(BASE)
    if attr == "lesion_location" and canonical in (
        "within the lumen of a hollow organ",
        "wall thickening",
    ):
        data["organ"] = "stomach"
    data[attr.replace("_", " ")] = synonym
    report = Report.from_dict(data)
    assert getattr(report, attr) == canonical
    again = Report.from_json(report.to_json())
    assert again == report


def test_legacy_demo_report():
    r = Report.from_legacy(LEGACY)
    assert r.organ == "liver" and r.organ_type == "parenchymal organ"
    assert r.size == (28.0, 29.0, 26.0)
    assert (
        r.density == "hypodense" and r.specific_features == "increased- and decreased-density areas"
    )
    assert r.lesion_location == "within the parenchymal organ"
    r2 = Report.from_legacy(json.dumps(LEGACY), spacing=(0.5, 0.5, 2.0))
    assert r2.size == (14.0, 14.5, 52.0)
    bladder = {"104": ["irregular,", "", {**LEGACY["5"][2], "shape": "irregular,wall thickening,"}]}
    rb = Report.from_legacy(bladder)
    assert rb.organ == "urinary_bladder" and rb.lesion_location == "wall thickening"
    assert rb.shape == "irregular wall thickening"


def test_text_rendering():
    r = Report.from_dict(BASE)
    mask = r.attribute_texts("mask")
    image = r.attribute_texts("image")
    assert list(mask) == list(MASK_ATTRIBUTES) and list(image) == list(IMAGE_ATTRIBUTES)
    assert mask["size"] == "size: 28x29x26 mm"
    assert r.attribute_texts("image", with_names=False)["density"] == "hypodense"
    assert "enhanced CT" in r.image_text() and "enhanced CT" not in r.mask_text()
    assert "round-like" not in r.text() and r.text().count(";") == 10
    assert Report.from_dict({**BASE, "size": 20}).size_text() == "20 mm"


def test_schema_lists_vocabulary():
    schema = Report.json_schema()
    assert schema["properties"]["size"]["minItems"] == 3
    assert set(schema["properties"]["density"]["enum"]) == set(VOCABULARY["density"])
    assert set(schema["properties"]["organ"]["enum"]) == set(LESION_ORGANS)
    assert "shape" in schema["required"] and "organ_type" not in schema["required"]


@pytest.mark.parametrize(
    ("change", "field", "suggestion"),
    [
        ({"density": "hypodens"}, "density", "hypodense"),
        ({"organ": "bladdr"}, "organ", "urinary_bladder"),
        ({"lesion location": "wall thickening"}, "lesion_location", "within the parenchymal organ"),
        ({"organ type": "hollow organ"}, "organ_type", "parenchymal organ"),
        ({"shpe": "round-like"}, "shpe", "shape"),
    ],
)
def test_invalid_values(change, field, suggestion):
    with pytest.raises(ReportError) as info:
        Report.from_dict({**BASE, **change})
    assert info.value.field == field and info.value.suggestion == suggestion
    assert suggestion in str(info.value)


@pytest.mark.parametrize("size", ["12 pixel", "-3 mm", "1x2 mm", [1, 2], "big", 0, 1e6])
def test_bad_sizes(size):
    with pytest.raises(ReportError) as info:
        Report.from_dict({**BASE, "size": size})
    assert info.value.field == "size"


def test_size_units():
    assert Report.from_dict({**BASE, "size": "2 cm"}).size == (20.0, 20.0, 20.0)
    assert Report.from_dict({**BASE, "size": [10, 11.5, 12]}).size == (10.0, 11.5, 12.0)
    assert Report.from_dict({**BASE, "size": "10 \u00d7 11 \u00d7 12mm"}).size == (10.0, 11.0, 12.0)


def test_aorta_has_no_organ_type():
    with pytest.raises(ReportError, match="neither a hollow nor a parenchymal"):
        Report.from_dict({**BASE, "organ": "aorta"})


CATEGORICAL = [a for a in VOCABULARY if a != "organ_type"]


@settings(max_examples=60, deadline=None)
@given(attr=st.sampled_from(CATEGORICAL), data=st.data())
def test_random_invalid_values_raise_with_closest_match(attr, data):
    canonical = data.draw(st.sampled_from(list(VOCABULARY[attr])))
    # Corrupt a canonical value: append a nonsense word that no synonym contains.
    junk = data.draw(st.text(alphabet="qzxjkv", min_size=3, max_size=6))
    bad = f"{canonical} {junk}"
    data_in = {k.replace(" ", "_"): v for k, v in BASE.items()}
    with pytest.raises(ReportError) as info:
        Report.from_dict({**data_in, attr: bad})
    err = info.value
    assert err.field == attr and err.value == bad
    assert err.suggestion in VOCABULARY[attr] and set(err.allowed) == set(VOCABULARY[attr])
    assert repr(bad) in str(err) and repr(err.suggestion) in str(err)


def test_pydantic_entry_points_raise_report_error():
    good = Report.from_dict(BASE)
    assert Report.model_validate(good.to_dict()) == good
    assert Report.model_validate_json(good.to_json()) == good
    with pytest.raises(ReportError, match="hypodense"):
        Report.model_validate({**good.to_dict(), "density": "hypodens"})
    with pytest.raises(ReportError):
        Report.model_validate_json("{not json")
    with pytest.raises(ReportError, match="not valid JSON"):
        Report.from_json("{not json")
