"""Checkpoints in the ctsynth shape: a folder with ``model.safetensors`` and ``config.json``.

``config.json`` holds ``{"format": "ctsynth-checkpoint", "format_version": 1, "package":
"cat-diffusion", "class": "SemanticSynthesizer", "config": {...}}``. Each of the two files is
written to a temporary file in the same folder, flushed and fsynced, moved over the target with
``os.replace``, and the folder is fsynced, so a crash leaves the old or the new file, never a torn
one. Only those two files are touched: a trainer may keep its own state (optimizer, step) in other
files of the folder, and loading ignores them. Nothing is unpickled on load; a foreign config
(other format, package or class) or mismatched tensor keys raise a ``CheckpointError`` naming the
file; the model comes back in eval mode.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ._model import SemanticSynthesizer, SynthesizerConfig
from .exceptions import CheckpointError, ConfigError

__all__ = ["load_checkpoint", "save_checkpoint"]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT = "ctsynth-checkpoint"
FORMAT_VERSION = 1
PACKAGE = "cat-diffusion"
CLASS = "SemanticSynthesizer"


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - file systems that refuse to fsync a directory
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def save_checkpoint(model: SemanticSynthesizer, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` to the folder ``path`` (created if missing).

    Args:
        model: the synthesizer to save.
        path: target folder; ``model.safetensors`` and ``config.json`` in it are replaced
            atomically, other files are left alone.

    Returns:
        The folder path.
    """
    if not isinstance(model, SemanticSynthesizer):
        raise CheckpointError(f"model must be a SemanticSynthesizer, got {type(model).__name__}.")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package": PACKAGE,
        "class": CLASS,
        "config": model.config.to_dict(),
    }
    text = json.dumps(payload, indent=2, sort_keys=True)
    meta = {"format": FORMAT, "package": PACKAGE, "class": CLASS}
    _atomic_write(out / WEIGHTS_NAME, lambda p: save_file(state, p, metadata=meta))
    _atomic_write(out / CONFIG_NAME, lambda p: Path(p).write_text(text, encoding="utf-8"))
    return out


def load_checkpoint(
    path: str | os.PathLike[str], *, device: torch.device | str = "cpu"
) -> SemanticSynthesizer:
    """Rebuild a synthesizer from the folder ``path``.

    Args:
        path: folder written by ``save_checkpoint`` (extra files are ignored).
        device: where to put the weights (default CPU).

    Returns:
        The model on ``device``, in eval mode.

    Raises:
        CheckpointError: a file is missing or unreadable, the config is foreign or invalid, or the
            tensors do not match the config.
    """
    root = Path(path)
    cfg_path, w_path = root / CONFIG_NAME, root / WEIGHTS_NAME
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise CheckpointError(
                f"checkpoint file {p.name} is missing in {root}; expected {CONFIG_NAME} and {WEIGHTS_NAME}."
            )
    try:
        payload = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{cfg_path} is not valid JSON: {err}") from err
    if not isinstance(payload, dict):
        raise CheckpointError(f"{cfg_path} must hold a JSON object, got {type(payload).__name__}.")
    for key, want in (
        ("format", FORMAT),
        ("format_version", FORMAT_VERSION),
        ("package", PACKAGE),
        ("class", CLASS),
    ):
        if payload.get(key) != want:
            raise CheckpointError(
                f"{cfg_path} has {key}={payload.get(key)!r}; this loader reads {key}={want!r}."
            )
    try:
        config = SynthesizerConfig.from_dict(payload["config"])
    except (ConfigError, TypeError, KeyError) as err:
        raise CheckpointError(f"invalid config in {cfg_path}: {err}") from err
    model = SemanticSynthesizer(config=config)
    try:
        state = load_file(str(w_path), device=str(device))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"cannot read {w_path}: {err}") from err
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # a tensor of the wrong shape
        raise CheckpointError(
            f"tensors in {w_path} do not match the config in {cfg_path}: {err}"
        ) from err
    if missing or unexpected:
        raise CheckpointError(
            f"tensors in {w_path} do not match the config in {cfg_path}: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}."
        )
    return model.to(device).eval()
