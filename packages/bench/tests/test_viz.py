"""render_views writes a PNG through the label's centre; bad input raises DataError."""

from __future__ import annotations

import numpy as np
import pytest
from ctsynth_bench.exceptions import DataError
from ctsynth_bench.viz import render_views
from ctsynth_bench.viz._views import _centre


def _blob():
    ct = np.full((20, 16, 12), -1000.0, np.float32)
    ct[4:16, 3:13, 2:10] = 40.0
    label = np.zeros(ct.shape, bool)
    label[10:14, 5:8, 6:9] = True
    return ct, label


def test_render_views_writes_a_png(tmp_path):
    ct, label = _blob()
    out = render_views(
        ct, label=label, spacing=(1.0, 1.0, 2.5), window=(40, 400), caption="a report", out=tmp_path / "a" / "v.png"
    )
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    import matplotlib.image

    img = matplotlib.image.imread(out)
    red = (img[..., 0] > 0.9) & (img[..., 1] < 0.4) & (img[..., 2] < 0.4)
    assert red.sum() > 20  # the outline is drawn


def test_centre_passes_through_the_label():
    _, label = _blob()
    assert _centre(label, label.shape) == (12, 6, 7)  # mean (11.5, 6, 7), rounded half to even
    ring = np.zeros((9, 9, 9), bool)
    ring[1:8, 1:8, 4] = True
    ring[2:7, 2:7, 4] = False  # hollow: the centroid is outside
    c = _centre(ring, ring.shape)
    assert ring[c]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ct": np.zeros((4, 4))}, "ct must be 3D"),
        ({"label": np.zeros((2, 2, 2))}, "label shape"),
        ({"spacing": (1.0, 0.0, 1.0)}, "spacing must be 3 positive"),
        ({"window": (40, 0)}, "a width > 0"),
    ],
)
def test_render_views_rejects_bad_input(tmp_path, kwargs, message):
    ct, label = _blob()
    args = {"ct": ct, "label": label, "spacing": (1.0, 1.0, 1.0), "window": (40, 400), "out": tmp_path / "x.png"}
    args.update(kwargs)
    with pytest.raises(DataError, match=message):
        render_views(args.pop("ct"), **args)
