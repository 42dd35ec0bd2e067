"""A small 3D segmenter for image-mask alignment checks and downstream experiments.

GuideGen's image-mask alignment check (issue 16, Tab. 3 of the paper) asks: does a segmenter
trained on *real* CTs find the organs of a *generated* CT where its label map puts them? This
module trains that segmenter (a MONAI ``UNet`` with residual units, CE + Dice loss) on the shared
training engine, predicts label maps, and scores them with Dice per class.

    seg = train_segmenter(ct, labels, num_classes=21, run_dir=RUN, minutes=5)
    pred = predict(seg, generated_ct)
    dice = dice_per_class(pred, generated_labels, num_classes=21)

Inputs are HU volumes ``(N, 1, X, Y, Z)``; the network sees ``clip(HU, lo, hi)`` scaled to
``[-1, 1]`` (``window``), so a checkpoint carries its own intensity convention.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .exceptions import BenchError

__all__ = [
    "Segmenter",
    "SegmenterConfig",
    "dice_per_class",
    "load_segmenter",
    "predict",
    "train_segmenter",
]


@dataclass(frozen=True)
class SegmenterConfig:
    """Segmenter architecture and intensity window.

    Attributes:
        num_classes: output classes, background included (labels ``0 .. num_classes - 1``).
        channels: UNet widths, one stride-2 step between levels.
        num_res_units: residual units per level.
        window: HU range mapped to ``[-1, 1]`` (values outside are clipped).
    """

    num_classes: int
    channels: tuple[int, ...] = (16, 32, 64)
    num_res_units: int = 1
    window: tuple[float, float] = (-1000.0, 1000.0)

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise BenchError(
                f"num_classes must be >= 2 (background + a class), got {self.num_classes}"
            )
        if len(self.channels) < 2:
            raise BenchError(f"channels needs at least two levels, got {self.channels}")
        if not self.window[0] < self.window[1]:
            raise BenchError(f"window must be (low, high) with low < high, got {self.window}")

    @property
    def divisor(self) -> int:
        """Spatial sizes must be multiples of this."""
        return 2 ** (len(self.channels) - 1)


class Segmenter(nn.Module):
    """MONAI UNet from HU volumes to class logits.

    Args:
        config: :class:`SegmenterConfig`.
    """

    def __init__(self, *, config: SegmenterConfig) -> None:
        super().__init__()
        from monai.networks.nets import UNet

        self.config = config
        self.net = UNet(
            spatial_dims=3,
            in_channels=1,
            out_channels=config.num_classes,
            channels=config.channels,
            strides=(2,) * (len(config.channels) - 1),
            num_res_units=config.num_res_units,
        )

    def normalize(self, hu: Tensor) -> Tensor:
        """HU -> ``[-1, 1]`` over the config's window."""
        lo, hi = self.config.window
        return (hu.clamp(lo, hi) - lo) / (hi - lo) * 2.0 - 1.0

    def forward(self, hu: Tensor) -> Tensor:
        """Logits ``(B, C, X, Y, Z)`` for HU volumes ``(B, 1, X, Y, Z)``."""
        if hu.ndim != 5 or hu.shape[1] != 1:
            raise BenchError(
                f"segmenter input must be (B, 1, X, Y, Z) HU, got shape {tuple(hu.shape)}"
            )
        bad = [s for s in hu.shape[2:] if s % self.config.divisor]
        if bad:
            raise BenchError(
                f"segmenter input sizes {tuple(hu.shape[2:])} must be multiples of {self.config.divisor}"
            )
        if not torch.isfinite(hu).all():
            raise BenchError("segmenter input has NaN or infinite values")
        return self.net(self.normalize(hu))

    def config_dict(self) -> dict[str, Any]:
        """Constructor arguments (the training engine's checkpoint format)."""
        return asdict(self.config)


def load_segmenter(folder: str | Path, *, device: torch.device | str = "cpu") -> Segmenter:
    """A segmenter from a training-engine stage folder (EMA weights when present) or a shipped
    folder of weight shards, in eval mode."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise BenchError(f"{folder}: no config.json; is this a segmenter stage folder?")
    meta = json.loads(cfg_path.read_text())
    if meta.get("class") != "Segmenter":
        raise BenchError(f"{cfg_path} holds a {meta.get('class')!r}, not a Segmenter")
    c = dict(meta["config"])
    c["channels"], c["window"] = tuple(c["channels"]), tuple(c["window"])
    seg = Segmenter(config=SegmenterConfig(**c))
    files = [folder / "ema.safetensors", folder / "model.safetensors"]
    found = [f for f in files if f.is_file()]
    if found:
        state = load_file(str(found[0]))
    else:  # shipped: split into shards under 4 MB
        shards = sorted(folder.glob("model-*-of-*.safetensors"))
        if not shards:
            raise BenchError(f"{folder}: no ema.safetensors, model.safetensors or model shards")
        state = {}
        for f in shards:
            state.update(load_file(str(f)))
    seg.load_state_dict(state)
    return seg.to(device).eval()


class _Volumes(torch.utils.data.Dataset):
    def __init__(self, images: Tensor, labels: Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.images[i], self.labels[i]


def train_segmenter(
    images: Tensor,
    labels: Tensor,
    *,
    num_classes: int,
    run_dir: str | Path,
    stage: str = "segmenter",
    minutes: float | None = None,
    max_steps: int | None = None,
    batch_size: int = 4,
    lr: float = 2e-3,
    channels: Sequence[int] = (16, 32, 64),
    window: tuple[float, float] = (-1000.0, 1000.0),
    seed: int = 0,
    resume: bool = False,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> Segmenter:
    """Train a segmenter on ``images`` (HU ``(N, 1, X, Y, Z)``) and ``labels`` (int ``(N, X, Y, Z)``).

    Loss: cross-entropy + soft Dice over the classes present in the batch (MONAI ``DiceCELoss``).
    Writes ``run_dir/stage`` (engine run folder: weights, EMA, metrics, loss curve) and returns the
    EMA network in eval mode.
    """
    from monai.losses import DiceCELoss

    from . import train as engine

    if images.ndim != 5 or images.shape[1] != 1:
        raise BenchError(f"images must be (N, 1, X, Y, Z) HU, got shape {tuple(images.shape)}")
    if labels.shape != (images.shape[0], *images.shape[2:]):
        raise BenchError(
            f"labels must be (N, X, Y, Z) = {(images.shape[0], *images.shape[2:])}, got {tuple(labels.shape)}"
        )
    top = int(labels.max())
    if int(labels.min()) < 0 or top >= num_classes:
        raise BenchError(
            f"labels must lie in 0..{num_classes - 1}, found {int(labels.min())}..{top}"
        )
    torch.manual_seed(seed)
    seg = Segmenter(
        config=SegmenterConfig(num_classes=num_classes, channels=tuple(channels), window=window)
    )
    crit = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)

    def loss_fn(
        model: nn.Module, batch: Any, g: torch.Generator
    ) -> tuple[Tensor, dict[str, float]]:
        x, y = batch
        loss = crit(model(x.float()), y[:, None].long())
        return loss, {}

    engine.train(
        seg,
        loss_fn,
        _Volumes(images, labels),
        run_dir=run_dir,
        stage=stage,
        config=engine.TrainConfig(
            max_steps=max_steps,
            minutes=minutes,
            batch_size=batch_size,
            lr=lr,
            ema_decay=0.99,
            checkpoint_every=200,
            log_every=25,
            seed=seed,
        ),
        resume=resume,
        device=device,
        progress=progress,
    )
    return load_segmenter(Path(run_dir) / stage, device=device)


@torch.no_grad()
def predict(seg: Segmenter, images: Tensor, *, batch: int = 8) -> Tensor:
    """Arg-max labels ``(N, X, Y, Z)`` int64 of HU volumes ``(N, 1, X, Y, Z)``."""
    dev = next(seg.parameters()).device
    out = [
        seg(images[i : i + batch].float().to(dev)).argmax(1).cpu()
        for i in range(0, images.shape[0], batch)
    ]
    return torch.cat(out)


def dice_per_class(
    pred: Tensor | np.ndarray, ref: Tensor | np.ndarray, *, num_classes: int
) -> np.ndarray:
    """Dice of each class ``1 .. num_classes - 1`` over a set of maps, pooled over all voxels.

    ``2 |P & R| / (|P| + |R|)`` with the sums taken over every map of the set; NaN for a class
    absent from both. Returns a float array of length ``num_classes - 1`` (class 1 first).
    """
    p = torch.as_tensor(np.asarray(pred)).long().reshape(-1)
    r = torch.as_tensor(np.asarray(ref)).long().reshape(-1)
    if p.shape != r.shape:
        raise BenchError(f"pred and ref differ in size: {p.numel()} vs {r.numel()} voxels")
    inter = torch.bincount(r[p == r], minlength=num_classes).double()
    sizes = (
        torch.bincount(p, minlength=num_classes).double()
        + torch.bincount(r, minlength=num_classes).double()
    )
    d = torch.where(sizes > 0, 2 * inter / sizes.clamp_min(1), torch.full_like(sizes, float("nan")))
    return d[1:num_classes].numpy()
