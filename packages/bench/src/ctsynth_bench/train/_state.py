"""What a stage folder holds, and how the trainer saves and restores itself.

A stage folder ``RUN/<stage>/`` holds:

* ``model.safetensors`` + ``config.json``: the latest weights in the shared checkpoint format
  (see :func:`save_model`), loadable by the model's own package;
* ``ema.safetensors``: the EMA weights with the same keys, when EMA is on;
* ``trainer_state.json`` + ``trainer_state-<step>.safetensors``: everything ``resume=True``
  needs to continue exactly: model and EMA weights, the AdamW state as tensors, the random
  generator states of every rank, and (in the JSON) the step, the data order position, the
  optimiser's scalar state and the settings that must not change on resume.

The trainer state is one safetensors file named by its step, written atomically, and then the
JSON that points at it (with its sha256), also atomically: the JSON is the commit point, so a
crash at any moment leaves a complete, consistent state to resume from. Older state files are
deleted after the JSON moved on. Nothing is unpickled.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import _atomic
from ._errors import RunFolderError, TrainConfigError

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
EMA_FILE = "ema.safetensors"
STATE_FILE = "trainer_state.json"
STATE_FORMAT = "ctsynth-trainer-state"
CHECKPOINT_FORMAT = "ctsynth-checkpoint"
FORMAT_VERSION = 1

SaveFn = Callable[[nn.Module, Path], Any]


@functools.cache
def _distributions() -> dict[str, list[str]]:
    return dict(importlib.metadata.packages_distributions())


def _distribution_of(obj: object) -> str:
    top = type(obj).__module__.split(".")[0]
    dists = _distributions().get(top)
    return dists[0] if dists else top


def check_savable(model: nn.Module, save_fn: SaveFn | None) -> None:
    """Raise :class:`TrainConfigError` unless :func:`save_model` can save ``model``."""
    if save_fn is None and not hasattr(model, "config_dict") and not hasattr(model, "save"):
        raise TrainConfigError(
            f"cannot save a {type(model).__name__}: give train() a save_fn(model, folder), or "
            "give the model a config_dict() -> dict (its constructor arguments) or a "
            "save(folder) method"
        )


def save_model(model: nn.Module, folder: Path, save_fn: SaveFn | None = None) -> None:
    """Write ``model.safetensors`` + ``config.json`` into ``folder``, each atomically.

    In order of preference: ``save_fn(model, folder)``; else, when the model has
    ``config_dict()``, the shared format ``{"format": "ctsynth-checkpoint", "format_version": 1,
    "package": <distribution>, "class": <class name>, "config": model.config_dict()}`` beside
    its ``state_dict`` as safetensors; else ``model.save(folder)``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if save_fn is not None:
        save_fn(model, folder)
    elif hasattr(model, "config_dict"):
        config = {
            "format": CHECKPOINT_FORMAT,
            "format_version": FORMAT_VERSION,
            "package": _distribution_of(model),
            "class": type(model).__name__,
            "config": model.config_dict(),
        }
        _atomic.write_safetensors(
            folder / MODEL_FILE, model.state_dict(), {"format": CHECKPOINT_FORMAT}
        )
        _atomic.write_json(folder / CONFIG_FILE, config)
    else:
        model.save(folder)


def optimizer_to_parts(
    optimizer: torch.optim.Optimizer,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimiser's ``state_dict`` into tensors (``optim/<param>/<name>``) and JSON."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in state["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{idx}/{name}"] = value
            else:
                scalars.setdefault(str(idx), {})[name] = value
    groups = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
        for g in state["param_groups"]
    ]
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_from_parts(
    optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
) -> None:
    """Load what :func:`optimizer_to_parts` split into ``optimizer``."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, idx, name = key.split("/", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, entry in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(entry)
    groups = [
        {k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]
    ]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def write_trainer_state(
    folder: Path, *, step: int, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
) -> None:
    """Write ``trainer_state-<step>.safetensors`` then ``trainer_state.json`` (commit point).

    Args:
        folder: The stage folder.
        step: Optimiser steps done.
        tensors: All tensors of the state (model, EMA, optimiser, generator states).
        meta: JSON-serialisable rest; ``format``, ``step``, ``file`` and ``sha256`` are added.
    """
    from safetensors.torch import save

    name = f"trainer_state-{step:09d}.safetensors"
    cpu = {k: v.detach().to("cpu").clone().contiguous() for k, v in tensors.items()}
    data = save(cpu, metadata={"format": STATE_FORMAT, "step": str(step)})
    _atomic.write_bytes(folder / name, data)
    record = {
        **meta,
        "format": STATE_FORMAT,
        "format_version": FORMAT_VERSION,
        "step": step,
        "file": name,
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    _atomic.write_json(folder / STATE_FILE, record)
    for old in folder.glob("trainer_state-*.safetensors"):
        if old.name != name:
            with contextlib.suppress(OSError):
                old.unlink()


def read_trainer_state(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """The state written by :func:`write_trainer_state`, or ``None`` if the folder has none.

    Raises:
        RunFolderError: The JSON or the tensor file is unreadable, foreign or does not match.
    """
    from safetensors.torch import load

    path = folder / STATE_FILE
    if not path.exists():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunFolderError(f"{path} is not readable JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != STATE_FORMAT:
        raise RunFolderError(f"{path} is not a ctsynth trainer state (format {STATE_FORMAT!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise RunFolderError(
            f"{path} has format_version {meta.get('format_version')!r}; this version reads "
            f"{FORMAT_VERSION}"
        )
    file = meta.get("file")
    if not isinstance(file, str) or "/" in file or os.sep in file:
        raise RunFolderError(f"{path} names no valid state file ({file!r})")
    data_path = folder / file
    try:
        data = data_path.read_bytes()
    except OSError as exc:
        raise RunFolderError(f"{data_path} (named by {path}) cannot be read: {exc}") from None
    if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        raise RunFolderError(f"{data_path} does not match the sha256 recorded in {path}")
    try:
        tensors = load(data)
    except Exception as exc:
        raise RunFolderError(f"{data_path} is not a readable safetensors file ({exc})") from None
    return meta, tensors
