"""A GuideGen system on disk: the run folder (or the shipped demo weights) and its loading.

Layout of a run folder (what ``bench train guidegen`` writes and ``bench synth guidegen --run``
reads)::

    guidegen.json        {"format": "ctsynth-guidegen", "format_version": 1, "preset": {...},
                          "text_encoder": "minilm", "stages": {...}}
    tcss/                cat_diffusion checkpoint (model.safetensors + config.json; when the
                         training engine wrote it, ema.safetensors holds the weights that are used)
    autoencoder/         ct_autoencoder checkpoint, its latent scale_factor in its config
                         (optional: label maps only without it)
    generator/           lesion_inpaint checkpoint of the latent generator (optional)
    MODEL_CARD.md        what was trained, how long, what it reached

A checkpoint folder may hold its weights split into ``model-0000k-of-0000n.safetensors`` shards
(each under 4 MB, so the demo weights can ship in git); :func:`load_system` reassembles them in a
temporary folder and loads through each library's own checkpoint loader.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..exceptions import BenchError
from .presets import GuideGenPreset

__all__ = [
    "FORMAT",
    "GuideGenSystem",
    "load_system",
    "ship_checkpoint",
    "shipped_dir",
    "write_manifest",
]

FORMAT = "ctsynth-guidegen"
FORMAT_VERSION = 1
SHARD_BYTES = 3_500_000


def shipped_dir() -> Path:
    """Folder of the demo system shipped with ctsynth-bench."""
    return Path(str(resources.files("ctsynth_bench") / "_weights" / "guidegen_demo"))


@dataclass
class GuideGenSystem:
    """A loaded GuideGen system (networks in eval mode).

    Attributes:
        preset: the system preset.
        tcss: ``cat_diffusion.SemanticSynthesizer``.
        autoencoder: ``ct_autoencoder.HDRAutoencoder`` or None.
        generator: ``lesion_inpaint.LatentGenerator`` or None.
        text_encoder: name for ``ctsynth_bench.text.load_text_encoder``.
        path: where it was loaded from.
        info: the manifest.
    """

    preset: GuideGenPreset
    tcss: nn.Module
    autoencoder: nn.Module | None
    generator: nn.Module | None
    text_encoder: str
    path: Path
    info: dict[str, Any]

    @property
    def has_ct(self) -> bool:
        return self.autoencoder is not None and self.generator is not None

    def to(self, device: torch.device | str) -> GuideGenSystem:
        for m in (self.tcss, self.autoencoder, self.generator):
            if m is not None:
                m.to(device)
        return self


def write_manifest(
    run: str | Path,
    preset: GuideGenPreset,
    *,
    text_encoder: str = "minilm",
    stages: dict[str, Any] | None = None,
) -> Path:
    """Write (or update) ``run/guidegen.json`` atomically."""
    from ..train import manifest_lock

    run = Path(run)
    with manifest_lock(run):
        return _write_manifest(run, preset, text_encoder=text_encoder, stages=stages)


def _write_manifest(
    run: Path, preset: GuideGenPreset, *, text_encoder: str, stages: dict[str, Any] | None
) -> Path:
    path = run / "guidegen.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    merged_stages = {**old.get("stages", {}), **(stages or {})}
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "preset": preset.to_dict(),
        "text_encoder": text_encoder,
        "stages": merged_stages,
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, sort_keys=True))
    tmp.replace(path)
    return path


def ship_checkpoint(
    src: str | Path, dst: str | Path, *, max_bytes: int = SHARD_BYTES
) -> list[Path]:
    """Copy a checkpoint folder, splitting ``model.safetensors`` into shards under ``max_bytes``."""
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for old in dst.glob("model*.safetensors"):
        old.unlink()
    shutil.copy2(src / "config.json", dst / "config.json")
    state = load_file(str(src / "model.safetensors"))
    groups: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k in sorted(state):
        b = state[k].numel() * state[k].element_size()
        if groups[-1] and size + b > max_bytes:
            groups.append({})
            size = 0
        groups[-1][k] = state[k].contiguous()
        size += b
    paths = []
    for i, g in enumerate(groups, 1):
        p = dst / f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        save_file(g, str(p))
        paths.append(p)
    return paths


def _assembled(folder: Path, tmp: Path) -> Path:
    """A checkpoint folder to load: ``folder`` itself, or (shards merged, or the engine's EMA
    weights put in place of ``model.safetensors``) a copy in ``tmp``."""
    ema = folder / "ema.safetensors"
    if (folder / "model.safetensors").exists() and not ema.exists():
        return folder
    if ema.exists():
        out = tmp / folder.name
        out.mkdir(parents=True)
        shutil.copy2(folder / "config.json", out / "config.json")
        shutil.copy2(ema, out / "model.safetensors")
        return out
    shards = sorted(folder.glob("model-*-of-*.safetensors"))
    if not shards:
        raise BenchError(f"{folder}: no model.safetensors and no model-*-of-*.safetensors shards")
    n = int(shards[0].stem.split("-of-")[1])
    if len(shards) != n:
        raise BenchError(f"{folder}: {len(shards)} shards found, the names say {n}")
    state: dict[str, torch.Tensor] = {}
    for s in shards:
        state.update(load_file(str(s)))
    out = tmp / folder.name
    out.mkdir(parents=True)
    shutil.copy2(folder / "config.json", out / "config.json")
    save_file(state, str(out / "model.safetensors"))
    return out


def load_system(
    path: str | Path | None = None,
    *,
    device: torch.device | str = "cpu",
    stages: tuple[str, ...] = ("tcss", "autoencoder", "generator"),
) -> GuideGenSystem:
    """Load a run folder (default: the shipped demo system).

    Args:
        path: run folder with ``guidegen.json``; None for the shipped demo weights.
        device: where to put the networks.
        stages: which stages to load (those missing on disk are None).

    Raises:
        BenchError: not a GuideGen run folder, or a stage is damaged.
    """
    import cat_diffusion

    root = shipped_dir() if path is None else Path(path)
    man = root / "guidegen.json"
    if not man.exists():
        raise BenchError(
            f"{root} is not a GuideGen run folder: {man.name} is missing (train one with "
            f"'bench train guidegen --out DIR', or leave --run out to use the shipped demo)"
        )
    info = json.loads(man.read_text())
    if info.get("format") != FORMAT:
        raise BenchError(f"{man}: format {info.get('format')!r} is not {FORMAT!r}")
    preset = GuideGenPreset.from_dict(info["preset"])
    with tempfile.TemporaryDirectory(prefix="guidegen-") as tmpd:
        tmp = Path(tmpd)
        if not (root / "tcss").exists():
            raise BenchError(f"{root}: the TCSS stage (tcss/) is missing; train it first")
        tcss = cat_diffusion.load_checkpoint(_assembled(root / "tcss", tmp), device=device)
        ae = gen = None
        if "autoencoder" in stages and (root / "autoencoder").exists():
            import ct_autoencoder as ca

            ae = ca.load_autoencoder(_assembled(root / "autoencoder", tmp), device=device).eval()
        if "generator" in stages and (root / "generator").exists():
            from lesion_inpaint import LatentGenerator

            gen = LatentGenerator.load(_assembled(root / "generator", tmp), device=device).eval()
    return GuideGenSystem(
        preset=preset,
        tcss=tcss.eval(),
        autoencoder=ae,
        generator=gen,
        text_encoder=str(info.get("text_encoder", "minilm")),
        path=root,
        info=info,
    )
