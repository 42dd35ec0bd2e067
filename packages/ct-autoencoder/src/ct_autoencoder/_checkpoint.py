"""Save and load autoencoders: ``model.safetensors`` + ``config.json`` in a folder, atomically.

Each file is written to a temporary name in the target folder, flushed and fsynced, then renamed
over the final name, so a crash never leaves a half-written checkpoint under the real name. Loading
never unpickles.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ._hdr import HDRAutoencoder
from ._vqgan import VQGAN
from .config import HDRAutoencoderConfig, VQGANConfig, config_from_dict, config_to_dict
from .exceptions import CheckpointError, ConfigError

__all__ = ["build_model", "load_autoencoder", "save_autoencoder"]

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def build_model(config: VQGANConfig | HDRAutoencoderConfig) -> VQGAN | HDRAutoencoder:
    """Build the model class that matches ``config``."""
    if isinstance(config, VQGANConfig):
        return VQGAN(config=config)
    if isinstance(config, HDRAutoencoderConfig):
        return HDRAutoencoder(config=config)
    raise ConfigError(f"config must be VQGANConfig or HDRAutoencoderConfig, got {type(config).__name__}")


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_autoencoder(model: VQGAN | HDRAutoencoder, folder: str | os.PathLike[str]) -> Path:
    """Write ``folder/model.safetensors`` and ``folder/config.json`` (atomically, weights first).

    Args:
        model: The model (discriminators included, so training can resume).
        folder: Target folder, created if missing.

    Returns:
        The folder path.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    _atomic_write(out / WEIGHTS, lambda p: save_file(state, p, metadata={"format": "pt"}))

    def write_json(p: str) -> None:
        with open(p, "w", encoding="utf-8") as fh:
            json.dump(config_to_dict(model.config), fh, indent=2, sort_keys=True)

    _atomic_write(out / CONFIG, write_json)
    return out


def load_autoencoder(
    folder: str | os.PathLike[str], *, device: torch.device | str = "cpu"
) -> VQGAN | HDRAutoencoder:
    """Load a model saved by :func:`save_autoencoder` (in eval mode).

    Args:
        folder: Checkpoint folder.
        device: Device for the weights (default CPU).

    Returns:
        VQGAN or HDRAutoencoder.
    """
    src = Path(folder)
    for name in (WEIGHTS, CONFIG):
        if not (src / name).is_file():
            raise CheckpointError(f"checkpoint folder {src} lacks {name}; expected {WEIGHTS} and {CONFIG}")
    try:
        cfg = config_from_dict(json.loads((src / CONFIG).read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError) as err:
        raise CheckpointError(f"{src / CONFIG} is not a valid config: {err}") from err
    model = build_model(cfg)
    state = load_file(str(src / WEIGHTS), device=str(device))
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # tensor size mismatch
        raise CheckpointError(f"weights in {src / WEIGHTS} do not match config {cfg.name!r}: {err}") from err
    if missing or unexpected:
        raise CheckpointError(
            f"weights in {src / WEIGHTS} do not match config {cfg.name!r}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    return model.to(device).eval()
