import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from report_bbox import (
    ORGANS,
    TOTALSEG_V1,
    TOTALSEG_V2,
    OrganError,
    is_hollow,
    organ_ids,
    resolve_organ,
    v1_to_v2,
)


def test_table_sizes_and_anchor_ids():
    assert len(TOTALSEG_V2) == 117 and sorted(TOTALSEG_V2) == list(range(1, 118))
    assert len(TOTALSEG_V1) == 104 and sorted(TOTALSEG_V1) == list(range(1, 105))
    # Anchors from the LesionDiffusion organ_type.json (v1: "5" liver, "104" urinary bladder)
    # and from TotalSegmentator's documented v2 class list.
    assert TOTALSEG_V1[5] == "liver" and TOTALSEG_V1[104] == "urinary_bladder"
    assert (
        TOTALSEG_V1[10] == "pancreas"
        and TOTALSEG_V1[42] == "esophagus"
        and TOTALSEG_V1[57] == "colon"
    )
    expected_v2 = {
        1: "spleen",
        2: "kidney_right",
        3: "kidney_left",
        4: "gallbladder",
        5: "liver",
        6: "stomach",
        7: "pancreas",
        15: "esophagus",
        20: "colon",
        21: "urinary_bladder",
        51: "heart",
        52: "aorta",
        90: "brain",
        117: "costal_cartilages",
    }
    for i, name in expected_v2.items():
        assert TOTALSEG_V2[i] == name


def test_v1_to_v2_preserves_names():
    v1 = np.arange(105).reshape(3, 5, 7)
    v2 = v1_to_v2(v1)
    for i, name in TOTALSEG_V1.items():
        got = int(v2.reshape(-1)[i])
        if name.startswith("heart_"):
            assert TOTALSEG_V2[got] == "heart"
        elif name in ("pulmonary_artery", "face"):
            assert got == 0
        else:
            assert TOTALSEG_V2[got] == name
    assert v2.reshape(-1)[0] == 0
    with pytest.raises(OrganError, match="pulmonary_artery"):
        v1_to_v2(np.array([49]), unmapped="error")
    with pytest.raises(OrganError, match=r"0\.\.104"):
        v1_to_v2(np.array([105]))


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("bladder", "urinary_bladder"),
        ("Urinary Bladder", "urinary_bladder"),
        ("kidney left", "kidney_left"),
        ("left kidney", "kidney_left"),
        ("oesophagus", "esophagus"),
        ("lungs", "lung"),
        (5, "liver"),
        ("21", "urinary_bladder"),
    ],
)
def test_aliases(name, canonical):
    assert resolve_organ(name) == canonical


def test_groups_and_kinds():
    assert organ_ids("kidney") == (2, 3)
    assert organ_ids("lung") == (10, 11, 12, 13, 14)
    assert organ_ids("lung_right") == (12, 13, 14)
    assert is_hollow("bladder") and is_hollow("gallbladder") and is_hollow("colon")
    assert not is_hollow("liver") and not is_hollow("kidney") and not is_hollow("lung")
    assert ORGANS["aorta"].kind == "other"


def test_did_you_mean():
    with pytest.raises(OrganError) as info:
        resolve_organ("livr")
    assert info.value.suggestion == "liver" and "did you mean 'liver'" in str(info.value)
    with pytest.raises(OrganError, match=r"1\.\.117"):
        resolve_organ(118)


def test_every_name_and_alias_round_trips():
    from report_bbox._organs import _ALIASES

    for name, organ in ORGANS.items():
        assert resolve_organ(name) == name
        assert resolve_organ(name.upper().replace("_", " ")) == name
        assert resolve_organ(name.replace("_", "-")) == name
        assert organ.ids == organ_ids(name)
    for alias, target in _ALIASES.items():
        assert resolve_organ(alias.replace("_", " ")) == target


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(sorted(ORGANS)), junk=st.text(alphabet="qzxj", min_size=2, max_size=4))
def test_random_typos_suggest_a_known_organ(name, junk):
    with pytest.raises(OrganError) as info:
        resolve_organ(name + junk)
    assert info.value.suggestion in ORGANS
