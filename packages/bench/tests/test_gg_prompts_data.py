"""GuideGen prompts and demo set: the template round-trips, bad prompts say what is allowed, and
every stored field is true of its label map."""

from __future__ import annotations

import numpy as np
import pytest
from ctsynth_bench.guidegen.control import site_hits, tumour_count
from ctsynth_bench.guidegen.data import LABEL_GRID, load_gg_templates, make_case
from ctsynth_bench.guidegen.prompts import (
    SITES,
    PromptError,
    PromptFields,
    parse_prompt,
    prompt_bank,
    sample_fields,
)


def test_prompt_round_trip() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        f = sample_fields(rng)
        assert parse_prompt(f.text) == f


@pytest.mark.parametrize(
    ("prompt", "says"),
    [
        (
            "The patient is a 50-year-old white male. In this imaging, the patient's condition is described as "
            "brain cancer, T2 N0 M0, 1 primary tumour, small.",
            "site 'brain' is not in the vocabulary",
        ),
        (
            "The patient is a 50-year-old white male. In this imaging, the patient's condition is described as "
            "liver cancer, T4 N0 M0, 1 primary tumour, small.",
            "T4 contradicts a small tumour",
        ),
        (
            "The patient is a 50-year-old white male. In this imaging, the patient's condition is described as "
            "kidney cancer, T1 N0 M0, 3 primary tumours, small.",
            "count 3 is not allowed for kidney",
        ),
        ("a tumour in the liver please", "does not follow the template"),
    ],
)
def test_bad_prompts_one_line_listing_allowed(prompt: str, says: str) -> None:
    with pytest.raises(PromptError) as err:
        parse_prompt(prompt)
    msg = str(err.value)
    assert says in msg and "\n" not in msg
    assert "allowed: sites liver" in msg and "template:" in msg


def test_bank_covers_every_cell() -> None:
    bank = prompt_bank(0, 2)
    assert {(f.site, f.count, f.size) for f in bank} == {
        (f.site, f.count, f.size) for f in bank[::2]
    }
    assert {f.site for f in bank} == set(SITES)


def test_demo_cases_are_true_to_their_fields() -> None:
    templates = load_gg_templates()
    for i in range(12):
        c = make_case(templates, 3, i, with_ct=(i < 2))
        assert c.labels.shape == (LABEL_GRID,) * 3
        assert site_hits(c.labels, c.fields.site), (i, c.fields)
        assert tumour_count(c.labels) == c.fields.count
        PromptFields.from_dict(c.fields.to_dict())  # valid under the vocabulary
        if c.ct is not None:
            assert c.ct.shape == (2 * LABEL_GRID,) * 3
            assert -1024 <= c.ct.min() and c.ct.max() < 3072
    a, b = make_case(templates, 3, 5, with_ct=False), make_case(templates, 3, 5, with_ct=False)
    assert np.array_equal(a.labels, b.labels) and a.fields == b.fields


def test_fixed_fields_are_placed() -> None:
    templates = load_gg_templates()
    for site in SITES:
        c = make_case(templates, 1, 0, with_ct=False, site=site, count=1, size="large")
        assert c.fields.site == site and site_hits(c.labels, site) and tumour_count(c.labels) == 1
