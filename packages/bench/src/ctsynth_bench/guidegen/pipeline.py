"""GuideGen synthesis: prompt -> tokens -> knowledge injection -> categorical sampler -> label map
-> latent generator (label map concatenated, text cross-attention) -> HDR decode -> CT.

:func:`generate` works in memory; :func:`synthesize_to_folder` writes an nnU-Net raw layout::

    imagesTr/<case>_0000.nii.gz   CT, int16 HU, the demo grid's RAS affine (real spacing in mm)
    labelsTr/<case>.nii.gz        organ + tumour map, GuideGen ids 0-20, on the CT's grid
    meta/<case>.json              prompt, its fields, seeds, sampler, steps, network calls
    dataset.json                  nnU-Net description (channel, label names and ids)

Cases are made in chunks of ``CHUNK``; chunk ``c`` draws from ``torch.Generator().manual_seed(
seed * 100003 + c)`` alone, so a run that is started again skips the finished chunks (all their
sidecars exist; a sidecar is written last, each file atomically) and produces the same cases.
Under ``torchrun`` chunk ``c`` belongs to rank ``c % WORLD_SIZE``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..exceptions import BenchError
from ._labels import GUIDEGEN_CLASSES
from .data import grid_affine
from .presets import GuideGenPreset, tumour_class_weights
from .prompts import PromptFields, parse_prompt
from .stages import labels_to_ct_grid, null_prompt, sample_label_maps
from .system import GuideGenSystem

__all__ = [
    "CHUNK",
    "Generated",
    "affines",
    "decode_latents",
    "encode",
    "generate",
    "labels_to_ct",
    "sample_labels",
    "sample_latents",
    "synthesize_to_folder",
    "write_volumes",
]

log = logging.getLogger(__name__)
CHUNK = 8


@dataclass(frozen=True)
class Generated:
    """Outputs of :func:`generate`.

    Attributes:
        labels: int64 ``(B, S, S, S)`` label maps on the label grid.
        ct: float32 ``(B, C, C, C)`` HU on the CT grid, or None (no CT stages).
        label_affine: RAS affine of the label grid.
        ct_affine: RAS affine of the CT grid.
        calls: TCSS network calls (guidance batches prompt and null in one call).
        blank: indices of CTs that are still blank (air where the map has solid organs,
            :func:`.control.blank_ct`) after the redraws.
        redrawn: the index of each CT drawn again because it was blank, once per redraw
            (``redraw_blank`` of :func:`generate`).
    """

    labels: torch.Tensor
    ct: torch.Tensor | None
    label_affine: np.ndarray
    ct_affine: np.ndarray
    calls: int
    blank: list[int] = field(default_factory=list)
    redrawn: list[int] = field(default_factory=list)


def encode(
    system: GuideGenSystem, prompts: Sequence[str] | None, batch: int, encoder: object | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt tokens ``(B, L, D)`` + mask, or the null prompt when ``prompts`` is None."""
    dim = system.preset.tcss.context_dim
    if prompts is None:
        return null_prompt(batch, dim)
    from ..text import encode_prompts, load_text_encoder

    enc = encoder if encoder is not None else load_text_encoder(system.text_encoder)
    tokens, mask = encode_prompts(enc, list(prompts))
    if tokens.shape[-1] != dim:
        raise BenchError(
            f"the text encoder gives {tokens.shape[-1]}-d tokens; this system was trained on {dim}-d"
        )
    return tokens.cpu(), mask.cpu()


@torch.no_grad()
def generate(
    system: GuideGenSystem,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    *,
    sampler: Literal["fast", "ancestral"] = "fast",
    steps: int | None = None,
    guidance: float | None = None,
    with_ct: bool = True,
    ct_steps: int | None = None,
    calibrate: bool | None = None,
    generator: torch.Generator | None = None,
    counts: Sequence[int] | None = None,
    count_weight: float | None = None,
    redraw_blank: int = 0,
) -> Generated:
    """Label maps (and CTs) for encoded prompts.

    Args:
        system: a loaded system.
        tokens, mask: ``(B, L, D)`` and ``(B, L)`` from :func:`encode` (null prompt = text removed).
        sampler: TCSS sampler; ``steps`` its steps (fast only).
        guidance: TCSS guidance (default: the preset's).
        with_ct: run the CT stages when the system has them.
        ct_steps: DDIM steps of the latent generator (default: the preset's).
        calibrate: undo the tumour weight of the loss in the x0 logits (default: the preset's).
        generator: CPU generator for every draw.
        counts: the prompted tumour count of each sample (the prompts' ``count`` field), which
            the count guidance steers to; None = no count guidance (as for the null prompt).
        count_weight: weight of the count guidance (default: the preset's; 0 = off).
        redraw_blank: draw a blank CT (air where its map has solid organs; the demo generator
            makes a few) again from new noise, up to this many times; the label map is kept.
    """
    if redraw_blank < 0:  # before the label maps are drawn
        raise BenchError(f"redraw_blank must be >= 0, got {redraw_blank}")
    labels, calls = sample_labels(
        system,
        tokens,
        mask,
        sampler=sampler,
        steps=steps,
        guidance=guidance,
        calibrate=calibrate,
        generator=generator,
        counts=counts,
        count_weight=count_weight,
    )
    ct, blank, redrawn = None, [], []
    if with_ct and system.has_ct:
        ct, blank, redrawn = labels_to_ct_checked(
            system, labels, tokens, steps=ct_steps, generator=generator, redraw_blank=redraw_blank
        )
    label_affine, ct_affine = affines(system.preset)
    return Generated(
        labels=labels[:, 0].cpu(),
        ct=ct,
        label_affine=label_affine,
        ct_affine=ct_affine,
        calls=calls,
        blank=blank,
        redrawn=redrawn,
    )


@torch.no_grad()
def labels_to_ct_checked(
    system: GuideGenSystem,
    labels: torch.Tensor,
    tokens: torch.Tensor,
    *,
    steps: int | None = None,
    generator: torch.Generator | None = None,
    redraw_blank: int = 0,
) -> tuple[torch.Tensor, list[int], list[int]]:
    """:func:`labels_to_ct`, then every blank CT (:func:`.control.blank_ct`) drawn again from new
    noise, up to ``redraw_blank`` times. Returns the CTs, the indices still blank and the index
    of each CT drawn again (once per redraw)."""
    if redraw_blank < 0:
        raise BenchError(f"redraw_blank must be >= 0, got {redraw_blank}")
    ct = labels_to_ct(system, labels, tokens, steps=steps, generator=generator)
    blank, redrawn = _blank(system, ct, labels), []
    for _ in range(redraw_blank):
        if not blank:
            break
        idx = torch.tensor(blank)
        ct[idx] = labels_to_ct(system, labels[idx], tokens[idx], steps=steps, generator=generator)
        redrawn += blank
        blank = [blank[i] for i in _blank(system, ct[idx], labels[idx])]
    if blank:
        log.info("%d of %d CTs are blank (air where the map has organs)", len(blank), len(ct))
    return ct, blank, redrawn


def _blank(system: GuideGenSystem, ct: torch.Tensor, labels: torch.Tensor) -> list[int]:
    from .control import blank_ct

    lab = labels_to_ct_grid(labels.cpu(), system.preset.ct_size)[:, 0]
    return [int(i) for i in np.flatnonzero(blank_ct(ct.numpy(), lab.numpy()))]


def affines(preset: GuideGenPreset) -> tuple[np.ndarray, np.ndarray]:
    """RAS affines of the preset's label grid and CT grid (the same field of view)."""
    s = preset.tcss.spatial_size[-1]
    return (
        grid_affine(s, preset.label_spacing),
        grid_affine(preset.ct_size, preset.label_spacing * s / preset.ct_size),
    )


@torch.no_grad()
def sample_labels(
    system: GuideGenSystem,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    *,
    sampler: Literal["fast", "ancestral"] = "fast",
    steps: int | None = None,
    guidance: float | None = None,
    calibrate: bool | None = None,
    generator: torch.Generator | None = None,
    counts: Sequence[int] | None = None,
    count_weight: float | None = None,
) -> tuple[torch.Tensor, int]:
    """The TCSS stage of :func:`generate` (same arguments): ``(labels (B, 1, S, S, S), calls)``."""
    p = system.preset
    cal = p.calibrate if calibrate is None else calibrate
    return sample_label_maps(
        system.tcss,
        tokens,
        mask,
        guidance=p.guidance if guidance is None else guidance,
        sampler=sampler,
        steps=steps,
        class_weights=tumour_class_weights(p.tumour_weight) if cal else None,
        generator=generator,
        chunk=p.tcss_chunk,
        counts=counts,
        count_weight=p.count_weight if count_weight is None else count_weight,
    )


@torch.no_grad()
def labels_to_ct(
    system: GuideGenSystem,
    labels: torch.Tensor,
    tokens: torch.Tensor,
    *,
    steps: int | None = None,
    generator: torch.Generator | None = None,
    tile: int | None = None,
) -> torch.Tensor:
    """CT in HU ``(B, C, C, C)`` for label maps ``(B, 1, S, S, S)`` and prompt tokens ``(B, L, D)``.

    Latent generator (label map concatenated on the latent grid, text by cross-attention, DDIM +
    guidance) on scaled latents, then the HDR decoder conditioned on the same label map, tile by
    tile when the CT is larger than ``tile`` (default: the preset's ``decode_tile``; 0 = whole).
    """
    z = sample_latents(system, labels, tokens, steps=steps, generator=generator)
    return decode_latents(system, z, labels, tile=tile)


def _check_ct_stages(system: GuideGenSystem) -> None:
    if not system.has_ct:
        raise BenchError(
            f"{system.path}: no CT stages (autoencoder/ and generator/); train them first"
        )


@torch.no_grad()
def sample_latents(
    system: GuideGenSystem,
    labels: torch.Tensor,
    tokens: torch.Tensor,
    *,
    steps: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The latent generator's stage of :func:`labels_to_ct`: scaled latents ``(B, c, l, l, l)``
    on the generator's device (DDIM, ``steps`` default: the preset's)."""
    _check_ct_stages(system)
    p = system.preset
    dev = next(system.generator.parameters()).device
    if dev.type == "cuda":  # hand the TCSS's cached blocks back before the CT stages' own
        torch.cuda.empty_cache()
    return system.generator.sample(
        labels.to(dev).long(),
        latent_size=(p.latent_size,) * 3,
        context=tokens.to(dev).float(),
        num_inference_steps=steps or p.gen_steps,
        guidance_scale=p.gen_guidance,
        generator=generator,
    )


@torch.no_grad()
def decode_latents(
    system: GuideGenSystem, z: torch.Tensor, labels: torch.Tensor, *, tile: int | None = None
) -> torch.Tensor:
    """The HDR decode of :func:`labels_to_ct`: CT in HU ``(B, C, C, C)`` (CPU) for scaled latents
    and the label maps ``(B, 1, S, S, S)`` they were made from."""
    _check_ct_stages(system)
    p = system.preset
    dev = z.device
    lab_ct = labels_to_ct_grid(labels.to(dev), p.ct_size)
    z = z / system.autoencoder.scale_factor
    tile = p.decode_tile if tile is None else tile
    if tile and p.ct_size > tile:
        from ct_autoencoder import tiled_decode

        x = tiled_decode(system.autoencoder, z, lab_ct, tile=tile, overlap=p.decode_overlap)
    else:
        x = system.autoencoder.decode_stage_2_outputs(z, lab_ct)
    return system.autoencoder.denormalize(x)[:, 0].clamp(-1024, 3071).cpu()


def write_volumes(
    out: str | Path,
    name: str,
    labels: np.ndarray,
    ct: np.ndarray | None,
    label_affine: np.ndarray,
    ct_affine: np.ndarray,
) -> None:
    """Write one case's NIfTI files (module docstring): the CT (int16 HU) and its label map
    upsampled to the CT grid, or the label map alone on its own grid when ``ct`` is None."""
    from ..data import save_nifti

    out = Path(out)
    lab = labels.astype(np.uint8)
    if ct is None:
        save_nifti(out / "labelsTr" / f"{name}.nii.gz", lab, label_affine, dtype="uint8")
        return
    f = ct.shape[-1] // lab.shape[-1]
    lab_out = lab.repeat(f, 0).repeat(f, 1).repeat(f, 2)
    save_nifti(out / "imagesTr" / f"{name}_0000.nii.gz", ct, ct_affine, dtype="int16")
    save_nifti(out / "labelsTr" / f"{name}.nii.gz", lab_out, ct_affine, dtype="uint8")


def _write_json(path: Path, obj: object) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def synthesize_to_folder(
    system: GuideGenSystem,
    prompts: Sequence[str],
    out: str | Path,
    *,
    n: int = 1,
    seed: int = 0,
    sampler: Literal["fast", "ancestral"] = "fast",
    steps: int | None = None,
    progress: bool = False,
    redraw_blank: int = 0,
) -> list[str]:
    """Write ``n`` cases per prompt (nnU-Net layout, module docstring); returns the case names.

    ``redraw_blank`` is :func:`generate`'s; each case's ``meta`` JSON says whether its CT is
    blank (``blank_ct``).

    Raises:
        PromptError: a prompt outside the template or vocabulary (before anything is written).
    """
    fields = [parse_prompt(p) for p in prompts]  # validate every prompt first
    if n < 1:
        raise BenchError(f"--n must be >= 1, got {n}")
    out = Path(out)
    jobs = [(j, k) for j in range(len(prompts)) for k in range(n)]
    chunks = [jobs[i : i + CHUNK] for i in range(0, len(jobs), CHUNK)]
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    for sub in ("imagesTr", "labelsTr", "meta"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    names = [f"gg_{j:03d}_{k:03d}" for j, k in jobs]
    encoder = None
    for c, chunk in enumerate(chunks):
        if c % world != rank:
            continue
        if all((out / "meta" / f"gg_{j:03d}_{k:03d}.json").exists() for j, k in chunk):
            continue
        if encoder is None:
            from ..text import load_text_encoder

            encoder = load_text_encoder(system.text_encoder)
        chunk_seed = seed * 100003 + c
        g = torch.Generator().manual_seed(chunk_seed)
        tokens, mask = encode(system, [prompts[j] for j, _ in chunk], len(chunk), encoder)
        res = generate(
            system,
            tokens,
            mask,
            sampler=sampler,
            steps=steps,
            generator=g,
            counts=[fields[j].count for j, _ in chunk],
            redraw_blank=redraw_blank,
        )
        for b, (j, k) in enumerate(chunk):
            name = f"gg_{j:03d}_{k:03d}"
            write_volumes(
                out,
                name,
                res.labels[b].numpy(),
                None if res.ct is None else res.ct[b].numpy(),
                res.label_affine,
                res.ct_affine,
            )
            _write_json(
                out / "meta" / f"{name}.json",
                {
                    "case": name,
                    "prompt": prompts[j],
                    "fields": fields[j].to_dict(),
                    "seed": seed,
                    "chunk": c,
                    "chunk_seed": chunk_seed,
                    "index_in_chunk": b,
                    "sampler": sampler,
                    "steps": steps or system.preset.tcss.fast_steps
                    if sampler == "fast"
                    else system.preset.tcss.num_train_timesteps,
                    "tcss_calls": res.calls,
                    "guidance": system.preset.guidance,
                    "count_weight": system.preset.count_weight,
                    "run": str(system.path),
                    "has_ct": res.ct is not None,
                    "blank_ct": b in res.blank,
                    "redraw_blank": redraw_blank,
                },
            )
        if progress:
            log.info("chunk %d/%d written", c + 1, len(chunks))
    if rank == 0:
        _write_json(
            out / "dataset.json",
            {
                "channel_names": {"0": "CT"},
                "labels": {name: i for i, name in enumerate(GUIDEGEN_CLASSES)},
                "numTraining": len(list((out / "labelsTr").glob("*.nii.gz"))),
                "file_ending": ".nii.gz",
                "description": "GuideGen synthetic torso CT + organ/tumour maps (ctsynth)",
            },
        )
    return names


def fields_of(prompts: Sequence[str]) -> list[PromptFields]:
    """Parsed fields of several prompts (raises PromptError on the first bad one)."""
    return [parse_prompt(p) for p in prompts]
