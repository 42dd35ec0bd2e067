"""Checkpoints in the ctsynth shape: a folder with ``model.safetensors`` and ``config.json``.

``config.json`` holds ``{"format": "ctsynth-checkpoint", "format_version": 1, "package":
"ct-autoencoder", "class": <VQGAN | HDRAutoencoder | Discriminators>, "config": {...}}``; the
config includes the latent ``scale_factor``. Each file is written to a temporary name in the
target folder, fsynced, renamed over the final name, and the folder is fsynced; nothing else in
the folder is touched, so a trainer can keep its own state files beside the two. Loading never
unpickles, returns the model in eval mode, and rejects a foreign config or mismatched tensors with
a :class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ._discriminators import Discriminators
from ._hdr import HDRAutoencoder
from ._vqgan import VQGAN
from .config import HDRAutoencoderConfig, VQGANConfig, config_from_dict, config_to_dict
from .exceptions import CheckpointError, ConfigError

__all__ = ["build_model", "load_autoencoder", "load_checkpoint", "save_autoencoder", "save_checkpoint"]

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
FORMAT = "ctsynth-checkpoint"
FORMAT_VERSION = 1
PACKAGE = "ct-autoencoder"
_CLASSES: dict[str, type[nn.Module]] = {
    "VQGAN": VQGAN, "HDRAutoencoder": HDRAutoencoder, "Discriminators": Discriminators,
}
_CONFIG_OF: dict[str, tuple[type, ...]] = {
    "VQGAN": (VQGANConfig,), "HDRAutoencoder": (HDRAutoencoderConfig,),
    "Discriminators": (VQGANConfig, HDRAutoencoderConfig),
}

Checkpointable = VQGAN | HDRAutoencoder | Discriminators


def build_model(config: VQGANConfig | HDRAutoencoderConfig) -> VQGAN | HDRAutoencoder:
    """Build the autoencoder class that matches ``config``."""
    if isinstance(config, VQGANConfig):
        return VQGAN(config=config)
    if isinstance(config, HDRAutoencoderConfig):
        return HDRAutoencoder(config=config)
    raise ConfigError(f"config must be VQGANConfig or HDRAutoencoderConfig, got {type(config).__name__}")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
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
    _fsync_dir(path.parent)


def save_checkpoint(model: Checkpointable, path: str | os.PathLike[str]) -> Path:
    """Write ``path/model.safetensors`` then ``path/config.json``, each atomically.

    Args:
        model: A VQGAN, HDRAutoencoder or Discriminators (unwrap DDP first: ``ddp.module``). The
            config written includes the model's ``scale_factor``.
        path: Target folder, created if missing; other files in it are left alone.

    Returns:
        The folder path.
    """
    cls = type(model).__name__
    if cls not in _CLASSES or not isinstance(model, _CLASSES[cls]):
        raise CheckpointError(
            f"save_checkpoint takes a VQGAN, HDRAutoencoder or Discriminators, got {type(model).__name__}"
            + ("; pass ddp.module, not the DDP wrapper" if hasattr(model, "module") else "")
        )
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    _atomic_write(out / WEIGHTS, lambda p: save_file(state, p, metadata={"format": "pt"}))
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "package": PACKAGE, "class": cls,
           "config": config_to_dict(model.config)}

    def write_json(p: str) -> None:
        with open(p, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=2, sort_keys=True)

    _atomic_write(out / CONFIG, write_json)
    return out


def _read_config(file: Path) -> tuple[str, Any]:
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{file} is not readable JSON: {err}") from err
    if not isinstance(doc, dict):
        raise CheckpointError(f"{file} must hold a JSON object, got {type(doc).__name__}")
    expect = {"format": FORMAT, "format_version": FORMAT_VERSION, "package": PACKAGE}
    for key, want in expect.items():
        if doc.get(key) != want:
            raise CheckpointError(
                f"{file} is not a {PACKAGE} checkpoint: {key} is {doc.get(key)!r}, expected {want!r}"
            )
    cls = doc.get("class")
    if cls not in _CLASSES:
        raise CheckpointError(f"{file}: class {cls!r} is not one of {sorted(_CLASSES)}")
    try:
        cfg = config_from_dict(doc.get("config") or {})
    except (ConfigError, TypeError) as err:
        raise CheckpointError(f"{file}: invalid config: {err}") from err
    if not isinstance(cfg, _CONFIG_OF[cls]):
        raise CheckpointError(f"{file}: class {cls} cannot take a {type(cfg).__name__}")
    return cls, cfg


def load_checkpoint(path: str | os.PathLike[str], *, device: torch.device | str = "cpu") -> Checkpointable:
    """Load a checkpoint written by :func:`save_checkpoint`, in eval mode.

    Extra files in the folder (a trainer's optimiser state, logs) are ignored.

    Args:
        path: Checkpoint folder.
        device: Device for the weights (default CPU).

    Returns:
        The VQGAN, HDRAutoencoder or Discriminators that was saved, with its config (and
        ``scale_factor``) restored.

    Raises:
        CheckpointError: a file is missing, the config is foreign (other format, package or class)
            or invalid, or the tensors do not match the config; the message names the file.
    """
    src = Path(path)
    for name in (WEIGHTS, CONFIG):
        if not (src / name).is_file():
            raise CheckpointError(f"checkpoint folder {src} lacks {name}; expected {WEIGHTS} and {CONFIG}")
    cls, cfg = _read_config(src / CONFIG)
    model = _CLASSES[cls](config=cfg)
    try:
        state = load_file(str(src / WEIGHTS), device="cpu")
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{src / WEIGHTS} is not a readable safetensors file: {err}") from err
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"tensors in {src / WEIGHTS} do not match {cls} config {cfg.name!r}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:  # tensor size mismatch
        raise CheckpointError(f"tensors in {src / WEIGHTS} do not match {cls} config {cfg.name!r}: {err}") from err
    return model.to(device).eval()


def save_autoencoder(model: Checkpointable, path: str | os.PathLike[str]) -> Path:
    """Alias of :func:`save_checkpoint` (same signature and behaviour)."""
    return save_checkpoint(model, path)


def load_autoencoder(path: str | os.PathLike[str], *, device: torch.device | str = "cpu") -> Checkpointable:
    """Alias of :func:`load_checkpoint` (same signature and behaviour)."""
    return load_checkpoint(path, device=device)
