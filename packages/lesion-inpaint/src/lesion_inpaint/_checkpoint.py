"""Checkpoints: weights as safetensors plus a JSON config, written atomically, never unpickled.

A checkpoint is a directory holding ``model.safetensors`` and ``config.json``
(``{"kind": ..., "format": 1, "config": {...}}``). Each file is written to a temporary file in the
same directory, flushed, fsynced and renamed over the target, so a crash leaves either the old or
the new file, never a torn one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .exceptions import CheckpointError

__all__ = ["load_checkpoint", "save_checkpoint"]

_WEIGHTS = "model.safetensors"
_CONFIG = "config.json"
_FORMAT = 1


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(
    directory: str | os.PathLike, *, kind: str, config: dict, state_dict: dict[str, torch.Tensor]
) -> Path:
    """Write ``state_dict`` and ``config`` to ``directory`` (created if needed).

    Args:
        directory: checkpoint directory.
        kind: model kind stored in the config (e.g. ``"linet"``), checked on load.
        config: JSON-serialisable config dict.
        state_dict: tensors to store (made contiguous and moved to CPU).

    Returns:
        The directory path.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    _atomic_write(d / _WEIGHTS, lambda p: save_file(tensors, p, metadata={"kind": kind}))
    payload = json.dumps({"kind": kind, "format": _FORMAT, "config": config}, indent=2, sort_keys=True)

    def _write_json(p: str) -> None:
        with open(p, "w", encoding="utf-8") as f:
            f.write(payload)

    _atomic_write(d / _CONFIG, _write_json)
    return d


def load_checkpoint(
    directory: str | os.PathLike, *, kind: str, device: torch.device | str = "cpu"
) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read a checkpoint written by :func:`save_checkpoint` (no pickle involved).

    Args:
        directory: checkpoint directory.
        kind: expected model kind.
        device: where to load the tensors.

    Returns:
        ``(config, state_dict)``.
    """
    d = Path(directory)
    missing = [n for n in (_WEIGHTS, _CONFIG) if not (d / n).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint directory {str(d)!r} lacks {missing}; expected {_WEIGHTS} and {_CONFIG}")
    try:
        meta = json.loads((d / _CONFIG).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{d / _CONFIG} is not valid JSON: {e}") from e
    if meta.get("kind") != kind:
        raise CheckpointError(f"checkpoint {str(d)!r} holds a {meta.get('kind')!r} model, expected {kind!r}")
    if meta.get("format") != _FORMAT:
        raise CheckpointError(f"unsupported checkpoint format {meta.get('format')!r}; this version reads {_FORMAT}")
    return meta["config"], load_file(str(d / _WEIGHTS), device=str(device))
