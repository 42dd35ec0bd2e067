"""A test double of ``LesionDiffusionSystem`` for the pipeline tests (tests only, not shipped).

``FakeLesionSystem`` follows the model-space contract of the LesionDiffusion system exactly
(shapes, dtypes, generator use, text switch) with hand-written rules instead of networks, so the
pipeline around it (crops, resampling, paste-back, writing, resume) can be tested without training:
the mask is the ellipsoid inscribed in the box (bumpy for "irregular"), the inpainted HU is the
crop's mean near the lesion plus a density offset (-40 hypodense, +40 hyperdense, 0 otherwise) plus
generator noise. With ``text=False`` the report is ignored (offset 0, smooth ellipsoid).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage


@dataclass(frozen=True)
class FakePreset:
    name: str = "fake"
    crop_size: int = 16
    base_spacing_mm: float = 1.5
    steps: int = 2
    guidance: float = 1.0

    def model_spacing(self, box_extent_mm: tuple[float, float, float]) -> float:
        # the box fits in 3/4 of the crop
        return max(self.base_spacing_mm, max(box_extent_mm) / (0.75 * self.crop_size))


class FakeLesionSystem:
    """Contract-following stand-in; records the calls it got."""

    text_encoder_id = "fake-encoder"
    run_dir: Path | None = None
    device = "cpu"

    def __init__(self, preset: FakePreset | None = None) -> None:
        self.preset = preset or FakePreset()
        self.calls: list[dict] = []

    def sample_mask(
        self, *, organs, target_organ, bbox, report, generator, steps=None, guidance=None, text=True
    ):
        s = self.preset.crop_size
        for t in (organs, target_organ, bbox):
            assert tuple(t.shape) == (1, 1, s, s, s)
        assert (
            organs.dtype == torch.int64
            and target_organ.dtype == torch.bool
            and bbox.dtype == torch.bool
        )
        self.calls.append(
            {"fn": "sample_mask", "report": report, "bbox": bbox.clone(), "text": text}
        )
        box = bbox[0, 0].numpy()
        idx = np.argwhere(box)
        lo, hi = idx.min(0), idx.max(0) + 1
        c = (lo + hi - 1) / 2.0
        r = np.maximum((hi - lo) / 2.0, 0.5)
        g = np.indices(box.shape).astype(np.float64)
        d = np.sqrt(sum(((g[i] - c[i]) / r[i]) ** 2 for i in range(3)))
        noise = torch.rand((s, s, s), generator=generator).numpy()
        if text and report.shape == "irregular":
            d = d * (1.0 + 0.6 * (ndimage.gaussian_filter(noise, 1.0) - 0.5) * 4)
        else:
            d = d + 0.02 * (noise - 0.5)
        mask = (d <= 1.0) & box
        if not mask.any():
            mask[tuple(np.round(c).astype(int))] = True
        return torch.from_numpy(mask.astype(np.uint8))[None, None]

    def inpaint(self, *, ct, mask, report, generator, steps=None, guidance=None, text=True):
        s = self.preset.crop_size
        assert tuple(ct.shape) == (1, 1, s, s, s) and ct.dtype == torch.float32
        assert tuple(mask.shape) == (1, 1, s, s, s) and mask.dtype == torch.uint8
        self.calls.append({"fn": "inpaint", "report": report, "ct": ct.clone(), "text": text})
        x = ct[0, 0].numpy().astype(np.float32)
        m = mask[0, 0].numpy() > 0
        ring = ndimage.binary_dilation(m, iterations=2) & ~m
        base = float(np.median(x[ring])) if ring.any() else 40.0
        offset = {"hypodense": -40.0, "hyperdense": 40.0}.get(report.density, 0.0) if text else 0.0
        noise = torch.randn((s, s, s), generator=generator).numpy() * 5.0
        out = x.copy()
        out[m] = base + offset + noise[m]
        return torch.from_numpy(out)[None, None]
