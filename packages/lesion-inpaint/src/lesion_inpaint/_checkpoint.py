"""Checkpoints in the ctsynth shape: a folder with ``model.safetensors`` and ``config.json``.

``config.json`` holds ``{"format": "ctsynth-checkpoint", "format_version": 1, "package":
"lesion-inpaint", "class": <LMNet | LINet | LatentGenerator>, "config": {...}}``. Each of the two
files is written to a temporary file in the same folder, flushed and fsynced, moved over the target
with ``os.replace``, and the folder is fsynced, so a crash leaves the old or the new file, never a
torn one. Only those two files are touched: a trainer may keep its own state files beside them, and
loading ignores extra files. Loading never unpickles, rejects a foreign config (other format,
package or class) or mismatched tensor keys with a :class:`CheckpointError` naming the file, and
returns the model in eval mode.
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

from .exceptions import CheckpointError, ConfigError

__all__ = ["load_checkpoint", "save_checkpoint"]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT = "ctsynth-checkpoint"
FORMAT_VERSION = 1
PACKAGE = "lesion-inpaint"


def _classes() -> dict[str, tuple[type, type]]:
    from ._latent_generator import LatentGenerator, LatentGeneratorConfig
    from ._linet import LINet, LINetConfig
    from ._lmnet import LMNet, LMNetConfig

    return {
        "LMNet": (LMNet, LMNetConfig),
        "LINet": (LINet, LINetConfig),
        "LatentGenerator": (LatentGenerator, LatentGeneratorConfig),
    }


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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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


def save_checkpoint(model: torch.nn.Module, path: str | os.PathLike) -> Path:
    """Write ``model`` (an LMNet, LINet or LatentGenerator) to the folder ``path`` (created if needed).

    Args:
        model: the network; its config and ``state_dict`` are stored (tensors moved to CPU).
        path: checkpoint folder; other files in it are left alone.

    Returns:
        The folder path.
    """
    classes = _classes()
    name = type(model).__name__
    if name not in classes or not isinstance(model, classes[name][0]):
        raise CheckpointError(
            f"save_checkpoint takes an LMNet, LINet or LatentGenerator, got {name}"
        )
    d = Path(path)
    d.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    payload = json.dumps(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "package": PACKAGE,
            "class": name,
            "config": model.config.to_dict(),
        },
        indent=2,
        sort_keys=True,
    )
    meta = {"format": FORMAT, "package": PACKAGE, "class": name}
    _atomic_write(d / WEIGHTS_NAME, lambda p: save_file(tensors, p, metadata=meta))

    def _write_json(p: str) -> None:
        with open(p, "w", encoding="utf-8") as f:
            f.write(payload)

    _atomic_write(d / CONFIG_NAME, _write_json)
    return d


def load_checkpoint(
    path: str | os.PathLike, *, device: torch.device | str = "cpu", expected: type | None = None
) -> Any:
    """Rebuild the model stored in the folder ``path`` (no pickle involved).

    Args:
        path: checkpoint folder written by :func:`save_checkpoint` (extra files are ignored).
        device: where to put the weights.
        expected: if given, the class the checkpoint must hold (``LINet.load`` passes ``LINet``).

    Returns:
        The LMNet, LINet or LatentGenerator, on ``device``, in eval mode.

    Raises:
        CheckpointError: a file is missing or unreadable, the config is foreign (other format,
            package or class) or invalid, or the tensor keys do not match the config.
    """
    d = Path(path)
    cfg_path, w_path = d / CONFIG_NAME, d / WEIGHTS_NAME
    missing = [p.name for p in (w_path, cfg_path) if not p.is_file()]
    if missing:
        raise CheckpointError(
            f"checkpoint folder {str(d)!r} lacks {missing}; expected {WEIGHTS_NAME} and {CONFIG_NAME}"
        )
    try:
        meta = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_path} is not valid JSON: {e}") from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"{cfg_path} must hold a JSON object, got {type(meta).__name__}")
    for key, want in (("format", FORMAT), ("format_version", FORMAT_VERSION), ("package", PACKAGE)):
        if meta.get(key) != want:
            raise CheckpointError(
                f"{cfg_path} has {key}={meta.get(key)!r}; this loader reads {key}={want!r}"
            )
    classes = _classes()
    name = meta.get("class")
    if name not in classes:
        raise CheckpointError(f"{cfg_path} holds class {name!r}; allowed: {sorted(classes)}")
    if expected is not None and name != expected.__name__:
        raise CheckpointError(f"{cfg_path} holds a {name}, expected a {expected.__name__}")
    model_cls, config_cls = classes[name]
    try:
        config = config_cls.from_dict(meta["config"])
    except (ConfigError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"invalid {name} config in {cfg_path}: {e!r}") from e
    try:
        state = load_file(str(w_path), device=str(device))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"cannot read {w_path}: {e}") from e
    model = model_cls(config=config)
    try:
        missing_keys, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a tensor of the wrong shape
        raise CheckpointError(
            f"tensors in {w_path} do not match the {name} config in {cfg_path}: {e}"
        ) from e
    if missing_keys or unexpected:
        raise CheckpointError(
            f"tensors in {w_path} do not match the {name} config in {cfg_path}: missing "
            f"{sorted(missing_keys)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    return model.to(device).eval()
