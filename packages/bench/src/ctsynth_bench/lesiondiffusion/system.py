"""The LesionDiffusion system in model space: LMNet, LINet, the codec and the text encoder.

``LesionDiffusionSystem`` works on model-grid crops (``preset.crop_size`` voxels per edge at
``preset.model_spacing(box extent)``); the pipeline resamples CT, organs and box into that grid and
back. A system lives in a run folder::

    RUN/lesiondiffusion.json      {"format": "ctsynth-lesiondiffusion", "format_version": 1,
                                   "preset": {...}, "text_encoder": id, "codec": {...}}
    RUN/lmnet/model.safetensors + config.json     (EMA weights)
    RUN/linet/model.safetensors + config.json     (EMA weights)
    RUN/vqgan/...                                  only when the preset's codec is "vqgan"

``LesionDiffusionSystem.load(None)`` loads the demo weights that ship with ctsynth-bench.
"""

from __future__ import annotations

import json
import logging
import math
import os
from importlib import resources
from pathlib import Path
from typing import Any

import report_bbox
import torch
from lesion_inpaint import EmptyMaskError
from safetensors.torch import load_file, save_file
from torch import nn

from ..exceptions import BenchError
from .presets import LesionDiffusionPreset, get_preset
from .stages import (
    SpaceToDepthCodec,
    TextUNet,
    binarize,
    build_linet,
    build_lmnet,
    linet_sample,
    lmnet_sample,
)

__all__ = ["FORMAT", "LesionDiffusionError", "LesionDiffusionSystem", "shipped_weights_dir"]

log = logging.getLogger(__name__)

FORMAT = "ctsynth-lesiondiffusion"
FORMAT_VERSION = 1
MANIFEST = "lesiondiffusion.json"
_MAX_ATTEMPTS = 4


class LesionDiffusionError(BenchError):
    """A run folder that is not a LesionDiffusion system, or unusable sampling inputs."""


def shipped_weights_dir() -> Path:
    """Folder of the demo system shipped as package data."""
    return Path(str(resources.files("ctsynth_bench") / "_weights" / "lesiondiffusion_demo"))


def _atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _save_net(net: TextUNet, folder: Path, *, role: str, half: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "model.safetensors.tmp"
    tensors = {}
    for k, v in net.state_dict().items():
        v = v.detach().contiguous().cpu()
        tensors[k] = v.half() if half and v.dtype == torch.float32 else v
    save_file(tensors, str(tmp))
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, folder / "model.safetensors")
    _atomic_json(
        folder / "config.json",
        {
            "format": "ctsynth-checkpoint",
            "format_version": 1,
            "package": "ctsynth-bench",
            "class": "TextUNet",
            "config": {"role": role, "unet": net.config.to_dict(), "num_tokens": net.num_tokens},
        },
    )


def _load_net(net: TextUNet, folder: Path, *, role: str, device: torch.device | str) -> TextUNet:
    cfg_path, w_path = folder / "config.json", folder / "model.safetensors"
    if (folder / "ema.safetensors").is_file():  # the training engine's averaged weights
        w_path = folder / "ema.safetensors"
    if not cfg_path.is_file() or not w_path.is_file():
        raise LesionDiffusionError(
            f"{folder}: missing config.json or model.safetensors of the {role} checkpoint"
        )
    cfg = json.loads(cfg_path.read_text())
    if (
        cfg.get("format") != "ctsynth-checkpoint"
        or cfg.get("class") != "TextUNet"
        or cfg["config"].get("role") != role
    ):
        raise LesionDiffusionError(f"{cfg_path}: not a LesionDiffusion {role} checkpoint")
    if cfg["config"]["unet"] != net.config.to_dict():
        raise LesionDiffusionError(
            f"{cfg_path}: the {role} network was trained with another architecture than the preset "
            f"builds ({cfg['config']['unet']} vs {net.config.to_dict()}); retrain it"
        )
    sd = load_file(str(w_path), device="cpu")
    missing, unexpected = set(net.state_dict()) - set(sd), set(sd) - set(net.state_dict())
    if missing or unexpected:
        raise LesionDiffusionError(
            f"{w_path}: tensor keys differ (missing {sorted(missing)[:3]}, extra {sorted(unexpected)[:3]})"
        )
    net.load_state_dict(sd)
    return net.to(device).eval()


class LesionDiffusionSystem:
    """LMNet + LINet + codec + text encoder, on model-space crops (see the module docstring).

    Build with :meth:`from_preset` (untrained) or :meth:`load` (a run folder or the shipped demo).

    Args:
        preset: the sizes.
        lmnet: LMNet's UNet.
        linet: LINet's UNet.
        codec: the latent codec (``encode``, ``decode``, ``scale_factor``).
        text_encoder: a ``ctsynth_bench.text.TextEncoder`` or None to load ``text_encoder_id``
            on first use.
        text_encoder_id: the encoder's id (a ``load_text_encoder`` name or folder).
        run_dir: the folder it was loaded from (None for the shipped weights or a fresh one).
        device: where the networks run.
    """

    def __init__(
        self,
        *,
        preset: LesionDiffusionPreset,
        lmnet: TextUNet,
        linet: TextUNet,
        codec: nn.Module,
        text_encoder: Any = None,
        text_encoder_id: str = "minilm",
        run_dir: Path | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.preset = preset
        self.device = torch.device(device)
        self.lmnet = lmnet.to(self.device).eval()
        self.linet = linet.to(self.device).eval()
        self.codec = codec.to(self.device)
        self._text_encoder = text_encoder
        self.text_encoder_id = (
            text_encoder_id
            if text_encoder is None
            else str(getattr(text_encoder, "id", text_encoder_id))
        )
        self._text_name = text_encoder_id
        self.run_dir = run_dir
        self._token_cache: dict[tuple[str, ...], torch.Tensor] = {}
        #: False for a system trained with ``--no-text``: it always uses the null context.
        self.trained_with_text = True

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_preset(
        cls,
        preset: LesionDiffusionPreset | str,
        *,
        seed: int = 0,
        text_encoder: Any = None,
        device: torch.device | str = "cpu",
    ) -> LesionDiffusionSystem:
        """An untrained system (weights drawn from ``seed``)."""
        p = get_preset(preset) if isinstance(preset, str) else preset
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            lmnet, linet = build_lmnet(p), build_linet(p)
        codec = _make_codec(p, {"kind": p.codec, "scale_factor": 1.0})
        return cls(
            preset=p,
            lmnet=lmnet,
            linet=linet,
            codec=codec,
            text_encoder=text_encoder,
            text_encoder_id=p.text_encoder,
            device=device,
        )

    @classmethod
    def load(
        cls,
        run_dir: str | os.PathLike[str] | None = None,
        *,
        device: torch.device | str = "cpu",
        text_encoder: Any = None,
    ) -> LesionDiffusionSystem:
        """Load a run folder (``None``: the shipped demo weights), networks in eval mode.

        Raises:
            LesionDiffusionError: not a LesionDiffusion run folder, or weights that do not fit the preset.
        """
        folder = shipped_weights_dir() if run_dir is None else Path(run_dir)
        man_path = folder / MANIFEST
        if not man_path.is_file():
            raise LesionDiffusionError(
                f"{folder}: no {MANIFEST}; not a LesionDiffusion run folder "
                "(make one with 'bench train lesiondiffusion' or 'bench run lesiondiffusion')"
            )
        man = json.loads(man_path.read_text())
        if man.get("format") != FORMAT:
            raise LesionDiffusionError(
                f"{man_path}: format {man.get('format')!r}, expected {FORMAT!r}"
            )
        p = LesionDiffusionPreset.from_dict(man["preset"])
        lmnet = _load_net(build_lmnet(p), folder / "lmnet", role="lmnet", device=device)
        linet = _load_net(build_linet(p), folder / "linet", role="linet", device=device)
        codec = _make_codec(p, man["codec"], folder=folder, device=device)
        system = cls(
            preset=p,
            lmnet=lmnet,
            linet=linet,
            codec=codec,
            text_encoder=text_encoder,
            text_encoder_id=man.get("text_encoder", p.text_encoder),
            run_dir=None if run_dir is None else folder,
            device=device,
        )
        system.trained_with_text = bool(man.get("text", True))
        return system

    def save(self, run_dir: str | os.PathLike[str], *, half: bool = False) -> Path:
        """Write the system into ``run_dir`` (networks first, the manifest last).

        Args:
            run_dir: the folder.
            half: store the network weights as float16 (the shipped demo weights, to stay small);
                they are loaded back into float32 networks.
        """
        folder = Path(run_dir)
        folder.mkdir(parents=True, exist_ok=True)
        _save_net(self.lmnet, folder / "lmnet", role="lmnet", half=half)
        _save_net(self.linet, folder / "linet", role="linet", half=half)
        codec_cfg = _codec_config(self.codec)
        if codec_cfg["kind"] == "vqgan":
            from ct_autoencoder import save_autoencoder

            save_autoencoder(self.codec.model, folder / "vqgan")
        _atomic_json(
            folder / MANIFEST,
            {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "preset": self.preset.to_dict(),
                "text_encoder": self._text_name,
                "text": self.trained_with_text,
                "codec": codec_cfg,
            },
        )
        return folder

    # ------------------------------------------------------------------ text
    @property
    def text_encoder(self) -> Any:
        """The text encoder (loaded on first use)."""
        if self._text_encoder is None:
            from ..text import load_text_encoder

            self._text_encoder = load_text_encoder(self._text_name)
        return self._text_encoder

    def tokens(self, report: report_bbox.Report, kind: str, *, text: bool = True) -> torch.Tensor:
        """Attribute tokens (1, 8, D) of a report (``kind`` ``"mask"`` or ``"image"``); zeros if not ``text``."""
        d = self.preset.context_dim
        if not text or not self.trained_with_text:
            return torch.zeros(1, 8, d, device=self.device)
        if not isinstance(report, report_bbox.Report):
            raise LesionDiffusionError(
                f"report must be a report_bbox.Report, got {type(report).__name__}"
            )
        attrs = report.attribute_texts(kind, with_names=False)  # type: ignore[arg-type]
        key = (kind, *attrs.values())
        if key not in self._token_cache:
            from ..text import encode_attributes

            tok = encode_attributes(self.text_encoder, attrs).float()
            if tok.shape != (1, 8, d):
                raise LesionDiffusionError(
                    f"text encoder gives tokens {tuple(tok.shape)}, the networks need (1, 8, {d})"
                )
            self._token_cache[key] = tok.cpu()
        return self._token_cache[key].to(self.device)

    # ------------------------------------------------------------------ sampling
    def _check_grid(self, name: str, v: torch.Tensor) -> None:
        s = self.preset.crop_size
        if not isinstance(v, torch.Tensor) or tuple(v.shape) != (1, 1, s, s, s):
            got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise LesionDiffusionError(
                f"{name} must be a tensor (1, 1, {s}, {s}, {s}) on the model grid, got {got}"
            )

    def target_voxels(self, report: report_bbox.Report, bbox: torch.Tensor) -> float:
        """Requested lesion volume in model voxels: the ellipsoid inscribed in the box (pi/6 of it)."""
        return float(bbox.float().sum()) * math.pi / 6

    @torch.no_grad()
    def sample_mask(
        self,
        *,
        organs: torch.Tensor,
        target_organ: torch.Tensor,
        bbox: torch.Tensor,
        report: report_bbox.Report,
        generator: torch.Generator,
        steps: int | None = None,
        guidance: float | None = None,
        text: bool = True,
    ) -> torch.Tensor:
        """Generate a lesion mask inside ``bbox`` with LMNet.

        Args:
            organs: (1, 1, S, S, S) int64 TotalSegmentator v2 ids.
            target_organ: (1, 1, S, S, S) bool, the organ the lesion belongs to.
            bbox: (1, 1, S, S, S) bool, the lesion box.
            report: the structured report (its mask attributes condition LMNet).
            generator: random source of the noise (CPU or on the system's device).
            steps: DDIM steps (default ``preset.steps``).
            guidance: CFG scale (default ``preset.lmnet_guidance``).
            text: False uses the null context (the ablation).

        Returns:
            uint8 (1, 1, S, S, S), one connected component inside the box (dilated by one voxel).

        Raises:
            lesion_inpaint.EmptyMaskError: still empty after retries.
        """
        for name, v in (("organs", organs), ("target_organ", target_organ), ("bbox", bbox)):
            self._check_grid(name, v)
        if not bbox.any():
            raise LesionDiffusionError(
                "bbox is empty; it must mark the lesion box on the model grid"
            )
        ctx = self.tokens(report, "mask", text=text)
        dev = self.device
        for attempt in range(_MAX_ATTEMPTS):
            prob = lmnet_sample(
                self.lmnet,
                preset=self.preset,
                organs=organs.to(dev),
                target=target_organ.to(dev).float(),
                bbox=bbox.to(dev).float(),
                context=ctx,
                noise_generator=generator,
                steps=steps,
                guidance=guidance,
            )
            m = binarize(prob, self.target_voxels(report, bbox), self.preset.lmnet_threshold)
            if m.any():
                return m.to(organs.device)
            log.info("LMNet attempt %d gave an empty mask; retrying with fresh noise", attempt + 1)
        raise EmptyMaskError(
            f"LMNet produced an empty mask after {_MAX_ATTEMPTS} attempts; check the bbox and organ"
        )

    @torch.no_grad()
    def inpaint(
        self,
        *,
        ct: torch.Tensor,
        mask: torch.Tensor,
        report: report_bbox.Report,
        generator: torch.Generator,
        steps: int | None = None,
        guidance: float | None = None,
        text: bool = True,
    ) -> torch.Tensor:
        """Inpaint the lesion into a HU crop with LINet.

        Args:
            ct: (1, 1, S, S, S) float32 HU on the model grid.
            mask: (1, 1, S, S, S) uint8 lesion mask.
            report: its image attributes condition LINet.
            generator: random source of the noise.
            steps: DDIM steps (default ``preset.steps``).
            guidance: CFG scale (default ``preset.guidance``).
            text: False uses the null context.

        Returns:
            float32 (1, 1, S, S, S) HU, equal to ``ct`` outside the latent mask's footprint.
        """
        self._check_grid("ct", ct)
        self._check_grid("mask", mask)
        if not mask.any():
            raise LesionDiffusionError("mask is empty; LINet needs the lesion mask to inpaint")
        ctx = self.tokens(report, "image", text=text)
        out, _ = linet_sample(
            self.linet,
            preset=self.preset,
            codec=self.codec,
            ct=ct.to(self.device).float(),
            mask=mask.to(self.device),
            context=ctx,
            noise_generator=generator,
            steps=steps,
            guidance=guidance,
        )
        return out.to(ct.device).float()


# ---------------------------------------------------------------------------------------------
# Codec (de)serialisation
# ---------------------------------------------------------------------------------------------


class _VQGANCodec(nn.Module):
    """ct_autoencoder's VQ-GAN behind the codec interface (HU in, HU out)."""

    def __init__(self, model: nn.Module, scale_factor: float) -> None:
        super().__init__()
        self.model = model.eval()
        self.scale_factor = float(scale_factor)

    def encode(self, hu: torch.Tensor) -> torch.Tensor:
        return self.model.encode_stage_2_inputs(self.model.normalize(hu))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.denormalize(self.model.decode_stage_2_outputs(z))


def _codec_config(codec: nn.Module) -> dict[str, Any]:
    if isinstance(codec, SpaceToDepthCodec):
        return codec.config()
    return {"kind": "vqgan", "scale_factor": float(codec.scale_factor)}


def _make_codec(
    p: LesionDiffusionPreset,
    cfg: dict[str, Any],
    *,
    folder: Path | None = None,
    device: torch.device | str = "cpu",
) -> nn.Module:
    kind = cfg.get("kind", p.codec)
    if kind == "space_to_depth":
        return SpaceToDepthCodec(
            window=p.hu_window, scale_factor=float(cfg.get("scale_factor", 1.0))
        )
    if kind == "vqgan":
        from ct_autoencoder import VQGAN, load_autoencoder

        from .stages import vqgan_config

        if folder is not None and (folder / "vqgan").is_dir():
            model = load_autoencoder(folder / "vqgan", device=device)
        else:
            model = VQGAN(config=vqgan_config(p))
        return _VQGANCodec(model, float(cfg.get("scale_factor", 1.0)))
    raise LesionDiffusionError(f"unknown codec kind {kind!r}; allowed: 'space_to_depth', 'vqgan'")
