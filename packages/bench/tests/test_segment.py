"""The alignment segmenter: Dice against MONAI, training that learns organs, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ctsynth_bench.exceptions import BenchError
from ctsynth_bench.guidegen._labels import NUM_CLASSES, class_id
from ctsynth_bench.guidegen.data import load_gg_templates, make_case
from ctsynth_bench.segment import (
    Segmenter,
    SegmenterConfig,
    dice_per_class,
    load_segmenter,
    predict,
    train_segmenter,
)


def test_dice_per_class_matches_monai_on_one_map() -> None:
    from monai.metrics import compute_dice

    rng = np.random.default_rng(0)
    ref = rng.integers(0, 5, size=(12, 12, 12))
    pred = np.where(rng.random(ref.shape) < 0.3, rng.integers(0, 5, size=ref.shape), ref)
    ours = dice_per_class(pred, ref, num_classes=5)

    def oh(a: np.ndarray) -> torch.Tensor:
        return F.one_hot(torch.from_numpy(a), 5).movedim(-1, 0)[None].float()

    theirs = compute_dice(oh(pred), oh(ref), include_background=False)[0].numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    assert np.isnan(dice_per_class(np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), num_classes=3)).all()
    assert dice_per_class(ref, ref, num_classes=5) == pytest.approx([1.0] * 4)


def test_segmenter_learns_organs_of_real_templates(tmp_path) -> None:
    temps = load_gg_templates()
    cases = [make_case(temps, 7, i, with_ct=True) for i in range(24)]
    ct = torch.from_numpy(np.stack([c.ct for c in cases])[:, None].astype(np.float32))
    lab = torch.from_numpy(np.stack([c.labels for c in cases]).astype(np.int64))
    lab = lab.repeat_interleave(2, 1).repeat_interleave(2, 2).repeat_interleave(2, 3)
    torch.manual_seed(0)
    seg = train_segmenter(
        ct[:20],
        lab[:20],
        num_classes=NUM_CLASSES,
        run_dir=tmp_path,
        max_steps=120,
        batch_size=4,
        progress=False,
    )
    d = dice_per_class(predict(seg, ct[20:]), lab[20:], num_classes=NUM_CLASSES)
    for organ in ("liver", "lung"):
        assert d[class_id(organ) - 1] > 0.6, (organ, d[class_id(organ) - 1])
    # the prediction follows the image: an all-air volume has no liver
    air = torch.full_like(ct[:1], -1000.0)
    assert (predict(seg, air) == class_id("liver")).sum() == 0
    again = load_segmenter(tmp_path / "segmenter")
    assert torch.equal(predict(again, ct[20:]), predict(seg, ct[20:]))


def test_segmenter_rejects_bad_inputs(tmp_path) -> None:
    seg = Segmenter(config=SegmenterConfig(num_classes=3, channels=(4, 8)))
    with pytest.raises(BenchError, match="multiples of 2"):
        seg(torch.zeros(1, 1, 5, 4, 4))
    with pytest.raises(BenchError, match="NaN"):
        seg(torch.full((1, 1, 4, 4, 4), float("nan")))
    with pytest.raises(BenchError, match=r"\(B, 1, X, Y, Z\)"):
        seg(torch.zeros(1, 4, 4, 4))
    with pytest.raises(BenchError, match=r"labels must lie in 0\.\.2"):
        train_segmenter(
            torch.zeros(2, 1, 4, 4, 4),
            torch.full((2, 4, 4, 4), 3),
            num_classes=3,
            run_dir=tmp_path,
            max_steps=1,
        )
    with pytest.raises(BenchError, match="num_classes"):
        SegmenterConfig(num_classes=1)
    with pytest.raises(BenchError, match=r"not a Segmenter|no config\.json"):
        load_segmenter(tmp_path)
