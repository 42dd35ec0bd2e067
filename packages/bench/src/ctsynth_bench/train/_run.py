"""Run folders: the manifest, per-stage metrics and loss curves, and the model card.

Layout::

    RUN/
      manifest.json        system, preset, data summary and its hash, seeds, package versions,
                           device, start/end times, per-stage steps and seconds
      README.md            model card (write_model_card)
      <stage>/             one per trained stage (see ctsynth_bench.train._state)
        model.safetensors  config.json  ema.safetensors  trainer_state.json ...
        metrics.jsonl      one JSON object per logged step
        loss.png           the loss curve

Only rank 0 writes. JSON files are written atomically; ``metrics.jsonl`` is appended line by line
(a torn last line after a crash is ignored on read and dropped on resume).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from . import _atomic
from ._errors import RunFolderError

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
METRICS = "metrics.jsonl"
LOSS_PNG = "loss.png"
RUN_FORMAT = "ctsynth-run"
RUN_FORMAT_VERSION = 1

_VERSIONED = (
    "ctsynth-bench",
    "report-bbox",
    "shape-metrics",
    "ct-autoencoder",
    "lesion-inpaint",
    "cat-diffusion",
    "torch",
    "monai",
    "numpy",
    "transformers",
    "safetensors",
)


def now() -> str:
    """The current UTC time, ISO 8601 with seconds."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def package_versions() -> dict[str, str]:
    """Versions of Python and of the packages a run depends on (installed ones only)."""
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def describe_device(device: torch.device | str) -> str:
    """A readable name of ``device``: the GPU model, or the CPU with its core count."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(device)})"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{device} ({platform.machine()}, {cores} cores, {torch.get_num_threads()} threads)"


def data_hash(summary: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a data summary (sorted keys, no spaces)."""
    text = json.dumps(summary, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_manifest(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The validated ``manifest.json`` of a run folder.

    Raises:
        RunFolderError: Missing, unreadable or foreign manifest (the message names the file).
    """
    path = Path(run_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunFolderError(f"{path} does not exist: not a ctsynth run folder") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunFolderError(f"{path} is not readable JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != RUN_FORMAT:
        raise RunFolderError(f"{path} is not a ctsynth run manifest (format {RUN_FORMAT!r})")
    if manifest.get("format_version") != RUN_FORMAT_VERSION:
        raise RunFolderError(
            f"{path} has format_version {manifest.get('format_version')!r}; this version reads "
            f"{RUN_FORMAT_VERSION}"
        )
    if not isinstance(manifest.get("stages"), dict):
        raise RunFolderError(f"{path} has no 'stages' object")
    return manifest


def start_run(
    run_dir: str | os.PathLike[str],
    *,
    system: str,
    preset: str,
    data: Mapping[str, Any],
    seeds: Mapping[str, int],
    device: torch.device | str = "cpu",
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Create ``RUN/manifest.json``, or check and reopen it when the run already exists.

    Call it on every rank (only rank 0 writes) before training the stages.

    Args:
        run_dir: The run folder (created).
        system: System name (``"lesiondiffusion"``, ``"guidegen"``).
        preset: Preset name.
        data: JSON-serialisable summary of the training data (cases, counts, crop size, ...);
            its hash is stored beside it.
        seeds: Named seeds (``{"train": 0}``).
        device: Training device, described in the manifest.
        extra: More JSON-serialisable fields to store.

    Returns:
        The manifest.

    Raises:
        RunFolderError: The folder holds a foreign manifest, or one of another system, preset or
            data (a resumed run must train on what it started with).
    """
    from ._dist import dist_info

    run = Path(run_dir)
    digest = data_hash(data)
    if not dist_info().is_main:
        return _open_run(run, system, preset, data, digest, seeds, device, extra)
    with manifest_lock(run):
        return _open_run(run, system, preset, data, digest, seeds, device, extra)


def _open_run(
    run: Path,
    system: str,
    preset: str,
    data: Mapping[str, Any],
    digest: str,
    seeds: Mapping[str, int],
    device: torch.device | str,
    extra: Mapping[str, Any] | None,
) -> dict[str, Any]:
    from ._dist import dist_info

    if (run / MANIFEST).exists():
        manifest = read_manifest(run)
        for key, want in (("system", system), ("preset", preset), ("data_hash", digest)):
            if manifest.get(key) != want:
                raise RunFolderError(
                    f"{run / MANIFEST} belongs to another run ({key} {manifest.get(key)!r}, now "
                    f"{want!r}); use a new run folder"
                )
    else:
        manifest = {
            "format": RUN_FORMAT,
            "format_version": RUN_FORMAT_VERSION,
            "system": system,
            "preset": preset,
            "data": dict(data),
            "data_hash": digest,
            "seeds": dict(seeds),
            "started": now(),
            "stages": {},
        }
    manifest.update(
        {
            "packages": package_versions(),
            "device": describe_device(device),
            "world_size": dist_info().world_size,
            **(dict(extra) if extra else {}),
        }
    )
    if dist_info().is_main:
        _atomic.write_json(run / MANIFEST, manifest)
    return manifest


@contextlib.contextmanager
def manifest_lock(run_dir: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock on ``RUN/.manifest.lock`` (stages trained by two processes at once
    update the manifest one after the other, so neither update is lost)."""
    import fcntl

    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    with open(run / ".manifest.lock", "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def update_stage(run_dir: Path, stage: str, fields: Mapping[str, Any]) -> None:
    """Merge ``fields`` into ``stages[stage]`` of the manifest (created minimal if missing)."""
    with manifest_lock(run_dir):
        _update_stage(run_dir, stage, fields)


def _update_stage(run_dir: Path, stage: str, fields: Mapping[str, Any]) -> None:
    if (run_dir / MANIFEST).exists():
        manifest = read_manifest(run_dir)
    else:
        manifest = {
            "format": RUN_FORMAT,
            "format_version": RUN_FORMAT_VERSION,
            "system": None,
            "preset": None,
            "data": {},
            "data_hash": data_hash({}),
            "seeds": {},
            "started": now(),
            "stages": {},
            "packages": package_versions(),
        }
    manifest["stages"].setdefault(stage, {}).update(fields)
    manifest["ended"] = now()
    _atomic.write_json(run_dir / MANIFEST, manifest)


def append_metrics(stage_dir: Path, record: Mapping[str, Any]) -> None:
    """Append one JSON line to ``metrics.jsonl`` (flushed and fsynced)."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    line = json.dumps(dict(record), sort_keys=True, allow_nan=True) + "\n"
    with open(stage_dir / METRICS, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def read_metrics(stage_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl`` (empty if absent; a torn last line is ignored).

    Raises:
        RunFolderError: A line other than the last is not a JSON object (names file and line).
    """
    path = Path(stage_dir) / METRICS
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "step" not in record:
                raise ValueError("not an object with a step")
        except ValueError as exc:
            if number == len(lines):
                logger.warning("ignoring a torn last line in %s", path)
                break
            raise RunFolderError(f"{path} line {number} is not a metrics record ({exc})") from None
        out.append(record)
    return out


def truncate_metrics(stage_dir: Path, step: int) -> None:
    """Keep only records with ``step <= step`` (on resume), rewriting the file atomically."""
    path = stage_dir / METRICS
    if not path.exists():
        return
    kept = [r for r in read_metrics(stage_dir) if r["step"] <= step]
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept)
    _atomic.write_bytes(path, text.encode("utf-8"))


def plot_loss(stage_dir: Path, *, title: str | None = None) -> Path | None:
    """Draw ``loss.png`` from ``metrics.jsonl`` (matplotlib Agg, no global state).

    Returns:
        The image path, or ``None`` when there is nothing to plot yet.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = [r for r in read_metrics(stage_dir) if isinstance(r.get("loss"), (int, float))]
    if not records:
        return None
    fig = Figure(figsize=(6, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([r["step"] for r in records], [r["loss"] for r in records], lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if all(r["loss"] > 0 for r in records):
        ax.set_yscale("log")
    ax.set_title(title or stage_dir.name)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return _atomic.atomic_write(stage_dir / LOSS_PNG, lambda tmp: fig.savefig(tmp, format="png"))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_model_card(
    run_dir: str | os.PathLike[str],
    *,
    title: str,
    intended_use: str,
    limits: Sequence[str],
    results: Mapping[str, Any],
    results_note: str = "",
    description: str = "",
) -> Path:
    """Write ``RUN/README.md``, a model card built from the manifest and the caller's results.

    Args:
        run_dir: The run folder (must hold a manifest).
        title: Heading, e.g. ``"LesionDiffusion demo"``.
        intended_use: What the weights are for, and for whom.
        limits: Known limits, one sentence each.
        results: Measured results (name -> value), as measured by the caller.
        results_note: How the results were measured (command, data, seeds).
        description: A paragraph on what was trained.

    Returns:
        The path of ``README.md``.

    Raises:
        RunFolderError: The folder has no valid manifest.
    """
    run = Path(run_dir)
    manifest = read_manifest(run)
    lines = [f"# {title}", ""]
    if description:
        lines += [description, ""]
    lines += [
        f"System `{manifest.get('system')}`, preset `{manifest.get('preset')}`, trained on "
        f"{manifest.get('device', 'an unrecorded device')} "
        f"(world size {manifest.get('world_size', 1)}), from {manifest.get('started')} to "
        f"{manifest.get('ended', 'unfinished')}.",
        "",
        "## Data",
        "",
        f"Data hash (sha256 of the summary): `{manifest.get('data_hash')}`.",
        "",
    ]
    lines += [f"- {key}: {_fmt(value)}" for key, value in sorted(manifest["data"].items())]
    lines += ["", "## Budget", "", "| stage | steps | seconds | status |", "|---|---|---|---|"]
    for stage, info in manifest["stages"].items():
        lines.append(
            f"| {stage} | {info.get('steps', '')} | {_fmt(info.get('seconds', ''))} | "
            f"{info.get('status', '')} |"
        )
    lines += ["", "## Measured results", ""]
    if results:
        lines += ["| measure | value |", "|---|---|"]
        lines += [f"| {key} | {_fmt(value)} |" for key, value in results.items()]
    else:
        lines.append("No results were measured for this run.")
    if results_note:
        lines += ["", results_note]
    lines += ["", "## Intended use", "", intended_use, "", "## Limits", ""]
    lines += [f"- {item}" for item in limits] or ["- None stated."]
    seeds = ", ".join(f"{k}={v}" for k, v in manifest.get("seeds", {}).items()) or "none recorded"
    versions = ", ".join(f"{k} {v}" for k, v in manifest.get("packages", {}).items())
    lines += ["", "## Reproduce", "", f"Seeds: {seeds}. Packages: {versions}.", ""]
    return _atomic.write_bytes(run / "README.md", "\n".join(lines).encode("utf-8"))
