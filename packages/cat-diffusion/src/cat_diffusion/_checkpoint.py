"""Checkpoints: ``model.safetensors`` (weights) + ``config.json`` (``SynthesizerConfig``).

Files are written to a temporary name in the target folder and moved into place with
``os.replace``, so a crash never leaves a half-written file. Nothing is unpickled on load.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ._model import SemanticSynthesizer, SynthesizerConfig
from .exceptions import CheckpointError, ConfigError

__all__ = ["load_checkpoint", "save_checkpoint"]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT = "cat-diffusion/semantic-synthesizer"
FORMAT_VERSION = 1


def _atomic_write(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(
    model: SemanticSynthesizer, directory: str | os.PathLike[str], *, metadata: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` to ``directory`` (created if missing).

    Args:
        model: the synthesizer to save.
        directory: target folder; existing checkpoint files in it are replaced atomically.
        metadata: optional JSON-serialisable extras stored in ``config.json`` under ``"metadata"``
            (e.g. the training step).

    Returns:
        The folder path.
    """
    if not isinstance(model, SemanticSynthesizer):
        raise CheckpointError(f"model must be a SemanticSynthesizer, got {type(model).__name__}.")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "metadata": metadata or {},
    }
    text = json.dumps(payload, indent=2, sort_keys=True)
    _atomic_write(out / WEIGHTS_NAME, lambda p: save_file(state, p, metadata={"format": FORMAT}))
    _atomic_write(out / CONFIG_NAME, lambda p: Path(p).write_text(text, encoding="utf-8"))
    return out


def load_checkpoint(
    directory: str | os.PathLike[str], *, device: torch.device | str = "cpu"
) -> tuple[SemanticSynthesizer, dict[str, Any]]:
    """Rebuild a synthesizer from ``directory``.

    Args:
        directory: folder written by ``save_checkpoint``.
        device: where to put the weights (default CPU).

    Returns:
        ``(model, metadata)``; the model is in eval mode.
    """
    root = Path(directory)
    cfg_path, w_path = root / CONFIG_NAME, root / WEIGHTS_NAME
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise CheckpointError(f"checkpoint file {p.name} is missing in {root}; expected {CONFIG_NAME} and {WEIGHTS_NAME}.")
    try:
        payload = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{cfg_path.name} is not valid JSON: {err}") from err
    if payload.get("format") != FORMAT:
        raise CheckpointError(f"{cfg_path.name} is not a cat-diffusion synthesizer checkpoint (format={payload.get('format')!r}).")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"unsupported checkpoint format_version {payload.get('format_version')!r}; this version reads {FORMAT_VERSION}.")
    try:
        config = SynthesizerConfig.from_dict(payload["config"])
    except (ConfigError, TypeError, KeyError) as err:
        raise CheckpointError(f"invalid config in {cfg_path.name}: {err}") from err
    model = SemanticSynthesizer(config)
    try:
        state = load_file(str(w_path), device=str(device))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"cannot read {w_path.name}: {err}") from err
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"weights do not match the config: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}."
        )
    return model.to(device).eval(), dict(payload.get("metadata") or {})
