"""``bench eval guidegen``: GuideGen's experiments on a trained system, as a Markdown report.

Seven sections, every number measured here on prompts the system was not shown in its report
(a seed of their own), against real demo cases (the real templates, deformed, with their own
seed). What "real" means on the demo: the anatomy and CT of a real template, smoothly deformed;
tumours are placed by the rule-based placer (the chest's own lung tumour stays real). Every part
is cached under ``OUT/parts/``, so an interrupted evaluation resumes where it stopped.

1. **Mask quality** (Tab. 1): FID (2.5D Inception) and LPIPS of label maps against real ones,
   full anatomy (each class drawn as its own grey level) and tumour only, for the system and two
   baselines: a continuous Gaussian diffusion over one-hot maps with the same text conditioning,
   rounded to classes (lesion-inpaint's latent generator, trained here for a stated budget), and
   real anatomy with rule-based tumours at the prompted site (Hu's deformation in spirit; on the
   demo it is the process that made the real maps, so it is the reference's own level).
2. **Image quality** (Tab. 2): FID (2.5D), LPIPS and FVD (I3D) of generated CTs against real CTs,
   from generated label maps (G) and from the real label maps (R; LPIPS then pairs each CT with
   the real CT of its own map).
3. **Image-mask alignment** (Tab. 3): Dice per organ between the label map and the run's
   alignment segmenter (trained on real CTs only) reading the generated CT, beside its Dice on real.
4. **Prompt alignment** (Fig. 3b, Tab. 4): tumour site and count accuracy, the same with the text
   removed, and a site classifier trained on real CTs applied to the generated CTs.
5. **Ablations** (Tab. 7): the TCSS with plain cross-attention instead of knowledge injection, and
   the autoencoder without the pyramidal anatomy condition and without the HDR window, each
   retrained here against the full model retrained with the same budget.
6. **Sampler**: fast versus ancestral categorical sampling: network calls, seconds, site, count,
   class-volume distance and FID of the maps.
7. **Downstream** (Tab. 5-6, Fig. 4): a segmenter trained on generated pairs (``downstream_sizes``)
   with and without real pairs, scored on held-out real CTs (organ Dice) and on the real lung
   tumour of the chest template (deformed copies; tumour Dice).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..exceptions import BenchError
from .lesiondiffusion import _json_default

__all__ = ["GGEvalSettings", "evaluate_guidegen"]

log = logging.getLogger(__name__)

SECTIONS = (1, 2, 3, 4, 5, 6, 7)
#: Seeds of the evaluation's own data: real cases, rule-based baseline, baseline training set.
REAL_SEED, RULE_SEED, TRAIN_SEED, TUMOUR_SEED = 70_001, 70_002, 70_003, 70_004
#: Label maps are drawn for the Inception / LPIPS networks with class k at grey level
#: -1000 + 100 k (window -1000..1100), so every class has its own level.
MAP_WINDOW = (-1000.0, 1100.0)
CT_WINDOW = (-1000.0, 1000.0)


@dataclass(frozen=True, kw_only=True)
class GGEvalSettings:
    """Sizes and budgets of ``bench eval guidegen`` (defaults: about an hour on 2 CPU cores).

    Attributes:
        n_per_site: held-out prompts per tumour site (sections 1-4).
        n_real: real demo cases (label maps and CTs) the generated ones are compared with.
        n_sampler: prompts of the fast-versus-ancestral comparison.
        baseline_minutes: training budget of the continuous-diffusion baseline (section 1).
        ablation_minutes: training budget of each TCSS arm (section 5).
        ae_minutes: training budget of each autoencoder arm (section 5).
        classifier_minutes: training budget of the site classifier (section 4).
        seg_minutes: training budget of each downstream segmenter (section 7).
        segmenter: section 3's segmenter: ``"run"`` (the run's own segmenter/ stage) or
            ``"nnunet"`` (nnU-Net v2, 3d_fullres, trained here on real cases for
            ``nnunet_minutes``; needs the ``nnunet`` extra).
        nnunet_minutes: training budget of section 3's nnU-Net.
        downstream_sizes: numbers of generated pairs of section 7 (0 = real only).
        n_real_train: real training pairs of section 7.
        n_tumour_test: deformed copies of the real lung tumour case (section 7).
        n_train: real cases the baseline, the site classifier and the autoencoder arms train on
            (the TCSS arms get four times as many label maps).
        max_steps: cap on every training's steps (for quick runs and tests).
        baseline_steps: DDIM steps of the continuous baseline's sampler.
        slices_per_axis: slices per volume and axis for FID and LPIPS.
        fvd_clips: clips of 16 axial slices per volume for FVD.
        seed: seed of the prompts and of every draw.
    """

    n_per_site: int = 8
    n_real: int = 40
    n_sampler: int = 10
    baseline_minutes: float = 4.0
    ablation_minutes: float = 4.0
    ae_minutes: float = 2.0
    classifier_minutes: float = 1.0
    seg_minutes: float = 1.0
    segmenter: str = "run"
    nnunet_minutes: float = 10.0
    downstream_sizes: tuple[int, ...] = (0, 100, 200, 500)
    n_real_train: int = 40
    n_tumour_test: int = 12
    n_train: int = 160
    max_steps: int | None = None
    baseline_steps: int = 50
    slices_per_axis: int = 4
    fvd_clips: int = 2
    seed: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.n_per_site, int) or self.n_per_site < 1:
            raise BenchError(f"n_per_site must be an integer >= 1, got {self.n_per_site!r}")
        for name in (
            "n_real",
            "n_sampler",
            "n_real_train",
            "n_tumour_test",
            "n_train",
        ):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 2:
                raise BenchError(f"{name} must be an integer >= 2, got {v!r}")
        for name in (
            "baseline_minutes",
            "ablation_minutes",
            "ae_minutes",
            "classifier_minutes",
            "seg_minutes",
            "nnunet_minutes",
        ):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v > 0):
                raise BenchError(f"{name} must be > 0 minutes, got {v!r}")
        if self.segmenter not in ("run", "nnunet"):
            raise BenchError(f"segmenter must be 'run' or 'nnunet', got {self.segmenter!r}")
        sizes = self.downstream_sizes
        if not sizes or any(not isinstance(k, int) or k < 0 for k in sizes):
            raise BenchError(f"downstream_sizes must be integers >= 0, got {sizes!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise BenchError(f"max_steps must be >= 1, got {self.max_steps!r}")
        if not 1 <= self.fvd_clips <= 8:
            raise BenchError(f"fvd_clips must be in 1..8, got {self.fvd_clips!r}")
        if not 1 <= self.slices_per_axis <= 32:
            raise BenchError(f"slices_per_axis must be in 1..32, got {self.slices_per_axis!r}")


@dataclass
class GGEvalSummary:
    """Where the report is and what each section measured (``results[section]``)."""

    report: Path
    results: dict[int, Any] = field(default_factory=dict)
    seconds: dict[int, float] = field(default_factory=dict)


# ----------------------------------------------------------------------------------- caching


class _Parts:
    """``OUT/parts/<name>.json`` / ``.npz``: computed once, read back on resume."""

    def __init__(self, root: Path) -> None:
        self.root = root / "parts"
        self.root.mkdir(parents=True, exist_ok=True)

    def json(self, name: str, fn: Callable[[], Any]) -> Any:
        path = self.root / f"{name}.json"
        if path.exists():
            return json.loads(path.read_text())
        value = fn()
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(value, indent=1, default=_json_default))
        tmp.replace(path)
        return json.loads(path.read_text())

    def arrays(self, name: str, fn: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        path = self.root / f"{name}.npz"
        if path.exists():
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        value = fn()
        tmp = self.root / f".{name}.tmp.npz"
        np.savez_compressed(tmp, **value)
        tmp.replace(path)
        return value


# ------------------------------------------------------------------------------ data & maps


def _fields_json(fields: Sequence[Any]) -> str:
    return json.dumps([f.to_dict() for f in fields])


def _fields_from(text: str) -> list[Any]:
    from ..guidegen.prompts import PromptFields

    return [PromptFields.from_dict(d) for d in json.loads(str(text))]


def _real_cases(n: int, seed: int, *, with_ct: bool = True) -> dict[str, np.ndarray]:
    from ..guidegen.data import load_gg_templates, make_case

    templates = load_gg_templates()
    cases = [make_case(templates, seed, i, with_ct=with_ct) for i in range(n)]
    out = {
        "labels": np.stack([c.labels for c in cases]).astype(np.uint8),
        "fields": np.array(_fields_json([c.fields for c in cases])),
    }
    if with_ct:
        out["ct"] = np.stack([c.ct for c in cases]).astype(np.float32)
    return out


def _generated(system: Any, fields: Sequence[Any], *, seed: int, encoder: Any, **kw: Any) -> dict:
    from ..guidegen.run import _batched

    t0 = time.time()
    maps, calls, cts = _batched(system, list(fields), len(fields), encoder=encoder, seed=seed, **kw)
    out = {
        "labels": np.stack(maps).astype(np.uint8),
        "calls": np.array(calls),
        "seconds": np.array(time.time() - t0),
        "fields": np.array(_fields_json(fields)),
    }
    if cts:
        out["ct"] = np.stack(cts).astype(np.float32)
    return out


def _on_ct_grid(maps: np.ndarray, size: int) -> np.ndarray:
    f = size // maps.shape[-1]
    return maps.repeat(f, 1).repeat(f, 2).repeat(f, 3)


def draw_maps(maps: np.ndarray) -> np.ndarray:
    """Label maps as grey volumes for the 2.5D networks: class k at ``-1000 + 100 k``."""
    return (-1000.0 + 100.0 * maps.astype(np.float32)).astype(np.float32)


def tumour_only(maps: np.ndarray) -> np.ndarray:
    """Tumour-only volumes: tumour at +1000, everything else at -1000."""
    from ..guidegen._labels import TUMOUR

    return np.where(maps == TUMOUR, 1000.0, -1000.0).astype(np.float32)


# ----------------------------------------------------------------------------------- metrics


#: Network features already computed in this process, by the volumes' digest and the settings:
#: the real set is compared with every other set, and its features are computed once.
_FEATURES: dict[tuple[Any, ...], Any] = {}


def blank_cts(cts: np.ndarray, maps: np.ndarray) -> list[int]:
    """Indices of CTs that came out as air where their label map (label grid) has solid organs
    (:func:`ctsynth_bench.guidegen.control.blank_ct`)."""
    from ..guidegen.control import blank_ct

    return [int(i) for i in np.flatnonzero(blank_ct(cts, _on_ct_grid(maps, cts.shape[-1])))]


def _digest(vols: np.ndarray) -> str:
    import hashlib

    a = np.ascontiguousarray(vols, np.float32)
    return hashlib.sha256(a.tobytes()).hexdigest() + str(a.shape)


def _features(vols: np.ndarray, window: tuple[float, float], slices: int) -> dict[str, np.ndarray]:
    import shape_metrics

    key = ("inception", _digest(vols), tuple(window), slices)
    if key not in _FEATURES:
        f = shape_metrics.inception_features_2_5d(
            np.ascontiguousarray(vols, np.float32),
            window=window,
            slices_per_axis=slices,
            central_fraction=0.8,
            device="cpu",
        )
        _FEATURES[key] = {a: f[a] for a in ("x", "y", "z")}
    return _FEATURES[key]


def fid_25d(
    a: np.ndarray, b: np.ndarray, *, window: tuple[float, float], slices: int
) -> dict[str, float]:
    """2.5D FID (mean over the three slicing axes) of two sets of volumes."""
    from .quality import frechet_distance_samples

    fa, fb = _features(a, window, slices), _features(b, window, slices)
    per = {k: frechet_distance_samples(fa[k], fb[k]) for k in fa}
    return {**per, "mean": float(np.mean(list(per.values())))}


def lpips_25d(
    a: np.ndarray,
    b: np.ndarray,
    *,
    window: tuple[float, float],
    slices: int,
    paired: bool,
    seed: int = 0,
) -> float:
    """Mean LPIPS; ``paired``: a[i] against b[i], else against a seeded random member of b."""
    import shape_metrics

    if paired:
        other = b
    else:
        rng = np.random.default_rng(seed)
        other = b[rng.integers(0, len(b), size=len(a))]
    return float(
        shape_metrics.lpips_2_5d(
            np.ascontiguousarray(a, np.float32),
            np.ascontiguousarray(other, np.float32),
            window=window,
            slices_per_axis=slices,
            central_fraction=0.8,
            device="cpu",
        )["mean"]
    )


def fvd_volumes(a: np.ndarray, b: np.ndarray, clips: int = 2) -> float:
    """FVD (I3D, 16 axial slices per clip, ``clips`` per volume) of two sets of CTs.

    The same number as ``shape_metrics.fvd`` (biased covariance of the I3D embeddings, then the
    Fréchet distance), with each set's embeddings computed once per process.
    """
    import shape_metrics

    def stats(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        key = ("i3d", _digest(v), clips)
        if key not in _FEATURES:
            f = shape_metrics.i3d_features(
                np.ascontiguousarray(v, np.float32),
                frames=min(16, v.shape[-1]),
                clips_per_volume=clips,
                window=CT_WINDOW,
                device="cpu",
            )
            mu = f.mean(axis=0)
            _FEATURES[key] = (mu, f.T @ f / len(f) - np.outer(mu, mu))
        return _FEATURES[key]

    return float(shape_metrics.frechet_distance(*stats(a), *stats(b)))


def _prompt_scores(maps: np.ndarray, fields: Sequence[Any]) -> dict[str, float]:
    from ..guidegen.control import score_maps

    s = score_maps(list(maps), list(fields))
    return {"site_rate": s.site_rate, "count_rate": s.count_rate, "tumour_rate": s.tumour_rate}


# --------------------------------------------------------------------------------- baselines


def train_onehot_diffusion(
    labels: np.ndarray,
    tokens: torch.Tensor,
    *,
    out: Path,
    minutes: float,
    max_steps: int | None,
    seed: int,
    context_dim: int,
) -> nn.Module:
    """The continuous baseline: Gaussian diffusion over one-hot maps (in [-1, 1]), the prompt by
    cross-attention (lesion-inpaint's latent generator with a constant anatomy channel)."""
    from lesion_inpaint import (
        DiffusionConfig,
        LatentGenerator,
        LatentGeneratorConfig,
        UNetConfig,
        generator_training_loss,
    )

    from .. import train as engine
    from ..guidegen._labels import NUM_CLASSES

    torch.manual_seed(seed)
    gen = LatentGenerator(
        config=LatentGeneratorConfig(
            latent_channels=NUM_CLASSES,
            num_label_classes=2,  # a constant anatomy channel (all background)
            unet=UNetConfig(
                in_channels=NUM_CLASSES + 2,
                out_channels=NUM_CLASSES,
                channels=(32, 64, 64),
                attention_levels=(False, False, True),
                num_head_channels=16,
                norm_num_groups=8,
                context_dim=context_dim,
            ),
            diffusion=DiffusionConfig(
                num_train_timesteps=1000,
                schedule="scaled_linear_beta",
                num_inference_steps=50,
                guidance_scale=2.0,
                cond_drop_prob=0.1,
            ),
        )
    )
    x0 = torch.nn.functional.one_hot(torch.from_numpy(labels).long(), NUM_CLASSES)
    x0 = x0.movedim(-1, 1).float() * 2 - 1

    def loss_fn(model: nn.Module, batch: Any, g: torch.Generator) -> tuple[torch.Tensor, dict]:
        z, tok = batch
        zeros = torch.zeros((z.shape[0], 1, *z.shape[2:]), dtype=torch.long, device=z.device)
        return generator_training_loss(model, z, zeros, context=tok, generator=g), {}

    engine.train(
        gen,
        loss_fn,
        torch.utils.data.TensorDataset(x0, tokens),
        run_dir=out,
        stage="onehot_diffusion",
        config=engine.TrainConfig(
            minutes=minutes,
            max_steps=max_steps,
            batch_size=8,
            lr=2e-4,
            warmup_steps=50,
            ema_decay=None,
            checkpoint_every=250,
            log_every=25,
            seed=seed,
        ),
        save_fn=lambda m, folder: m.save(folder),
        resume=True,
        progress=False,
    )
    return gen.eval()


@torch.no_grad()
def sample_onehot_diffusion(
    gen: nn.Module, tokens: torch.Tensor, size: int, *, seed: int, steps: int, batch: int = 10
) -> np.ndarray:
    """Sample the continuous baseline and round to classes (arg-max over the one-hot channels)."""
    out = []
    for i in range(0, len(tokens), batch):
        tok = tokens[i : i + batch]
        zeros = torch.zeros((len(tok), 1, size, size, size), dtype=torch.long)
        g = torch.Generator().manual_seed(seed * 1009 + i)
        x = gen.sample(zeros, context=tok, generator=g, num_inference_steps=steps)
        out.append(x.argmax(1).to(torch.uint8).numpy())
    return np.concatenate(out)


def rule_baseline(fields: Sequence[Any], seed: int) -> tuple[np.ndarray, list[int]]:
    """Real anatomy with rule-based tumours at each prompt's site, count and size."""
    from ..guidegen.data import load_gg_templates, make_case

    templates = load_gg_templates()
    maps, kept = [], []
    for i, f in enumerate(fields):
        try:
            c = make_case(
                templates, seed, i, with_ct=False, site=f.site, count=f.count, size=f.size
            )
        except ValueError:  # the placer could not fit the prompt in this deformation
            continue
        maps.append(c.labels)
        kept.append(i)
    return np.stack(maps).astype(np.uint8), kept


# ----------------------------------------------------------------------------- classifiers


class SiteClassifier(nn.Module):
    """A small 3D CNN: CT (HU) -> tumour site logits."""

    def __init__(self, n_sites: int, width: int = 16) -> None:
        super().__init__()
        self.n_sites, self.width = n_sites, width
        w = width
        self.body = nn.Sequential(
            nn.Conv3d(1, w, 3, padding=1), nn.GroupNorm(4, w), nn.SiLU(), nn.MaxPool3d(2),
            nn.Conv3d(w, 2 * w, 3, padding=1), nn.GroupNorm(4, 2 * w), nn.SiLU(), nn.MaxPool3d(2),
            nn.Conv3d(2 * w, 4 * w, 3, padding=1), nn.GroupNorm(4, 4 * w), nn.SiLU(),
            nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4 * w, n_sites),
        )  # fmt: skip

    def config_dict(self) -> dict[str, int]:
        return {"n_sites": self.n_sites, "width": self.width}

    def forward(self, ct: torch.Tensor) -> torch.Tensor:
        return self.body((ct.clamp(-1000, 1000) / 1000.0).float())


def train_site_classifier(
    ct: np.ndarray,
    sites: np.ndarray,
    *,
    out: Path,
    minutes: float,
    max_steps: int | None,
    seed: int,
) -> SiteClassifier:
    """Train :class:`SiteClassifier` on real CTs ``(N, X, Y, Z)`` and site indices ``(N,)``."""
    from .. import train as engine
    from ..guidegen.prompts import SITES

    torch.manual_seed(seed)
    net = SiteClassifier(len(SITES))
    x = torch.from_numpy(ct[:, None].astype(np.float32))
    y = torch.from_numpy(sites.astype(np.int64))

    def loss_fn(model: nn.Module, batch: Any, g: torch.Generator) -> tuple[torch.Tensor, dict]:
        xb, yb = batch
        return nn.functional.cross_entropy(model(xb), yb), {}

    engine.train(
        net,
        loss_fn,
        torch.utils.data.TensorDataset(x, y),
        run_dir=out,
        stage="site_classifier",
        config=engine.TrainConfig(
            minutes=minutes,
            max_steps=max_steps,
            batch_size=8,
            lr=1e-3,
            checkpoint_every=200,
            log_every=25,
            seed=seed,
        ),
        resume=True,
        progress=False,
    )
    return net.eval()


@torch.no_grad()
def classify_sites(net: SiteClassifier, ct: np.ndarray) -> np.ndarray:
    out = [
        net(torch.from_numpy(ct[i : i + 16, None].astype(np.float32))).argmax(1).numpy()
        for i in range(0, len(ct), 16)
    ]
    return np.concatenate(out)


# ------------------------------------------------------------------------------- the sections


def _site_index(fields: Sequence[Any]) -> np.ndarray:
    from ..guidegen.prompts import SITES

    names = list(SITES)
    return np.array([names.index(f.site) for f in fields])


def evaluate_guidegen(
    run: str | os.PathLike[str] | None,
    *,
    out: str | os.PathLike[str],
    settings: GGEvalSettings | None = None,
    sections: Sequence[int] = SECTIONS,
    progress: bool = True,
) -> GGEvalSummary:
    """Run the chosen sections on a GuideGen run folder (None: the shipped demo) into ``out``."""
    from ..guidegen.prompts import SITES
    from ..guidegen.run import _prompts
    from ..guidegen.system import load_system
    from ..text import load_text_encoder

    s = settings or GGEvalSettings()
    bad = [k for k in sections if k not in SECTIONS]
    if bad or not sections:
        raise BenchError(f"sections must be a non-empty list of 1..7, got {list(sections)}")
    system = load_system(run)
    if not system.has_ct and any(k in sections for k in (2, 3, 7)):
        raise BenchError(
            f"{system.path}: sections 2, 3 and 7 need the CT stages (autoencoder/, generator/); "
            "train them with 'bench train guidegen --stages autoencoder,generator'"
        )
    if 3 in sections and s.segmenter == "nnunet" and importlib.util.find_spec("nnunetv2") is None:
        raise BenchError(
            "segmenter 'nnunet' needs nnU-Net v2: install the 'nnunet' extra "
            "(in this repository: uv sync --extra nnunet), or use segmenter 'run'"
        )
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    parts = _Parts(root)
    prior = root / "settings.json"
    here = {"settings": dataclasses.asdict(s), "run": str(system.path)}
    if prior.exists():
        before = json.loads(prior.read_text())
        # a setting added since that evaluation began counts as its default
        before["settings"] = {
            **json.loads(json.dumps(dataclasses.asdict(GGEvalSettings()))),
            **before.get("settings", {}),
        }
    if prior.exists() and before != json.loads(json.dumps(here)):
        raise BenchError(
            f"{root} holds an evaluation with other settings or another run ({prior}); "
            "use another --out folder"
        )
    prior.write_text(json.dumps(here, indent=1))
    enc = load_text_encoder(system.text_encoder)
    p = system.preset
    fields = _prompts(s.n_per_site, 1000 + s.seed)
    summary = GGEvalSummary(report=root / "report.md")

    def say(text: str) -> None:
        if progress:
            print(f"[eval guidegen] {text}", flush=True)

    def gen_main() -> dict[str, np.ndarray]:
        say(f"generating {len(fields)} label maps and CTs from held-out prompts")
        return _generated(system, fields, seed=s.seed, encoder=enc, with_ct=system.has_ct)

    def real() -> dict[str, np.ndarray]:
        say(f"making {s.n_real} real demo cases")
        return _real_cases(s.n_real, REAL_SEED + s.seed, with_ct=True)

    G = parts.arrays("generated", gen_main)
    R = parts.arrays("real", real)
    real_fields = _fields_from(R["fields"])

    timed: dict[int, float] = {}

    clock = root / "parts" / "seconds.json"
    spent = json.loads(clock.read_text()) if clock.is_file() else {}

    def section(k: int, fn: Callable[[], Any]) -> None:
        if k not in sections:
            return
        t0 = time.time()
        say(f"section {k}")
        fresh = not (root / "parts" / f"section{k}.json").is_file()
        summary.results[k] = parts.json(f"section{k}", fn)
        if fresh:  # the time a section took when it was computed, kept for the report
            spent[str(k)] = time.time() - t0
            tmp = clock.with_suffix(".tmp")
            tmp.write_text(json.dumps(spent, indent=1))
            tmp.replace(clock)
        timed[k] = spent.get(str(k), time.time() - t0)

    # ---------------------------------------------------------------- 1. mask quality
    def s1() -> dict[str, Any]:
        sl = s.slices_per_axis
        train = parts.arrays(
            "baseline_train", lambda: _real_cases(s.n_train, TRAIN_SEED, with_ct=False)
        )
        from ..guidegen.pipeline import encode

        tr_fields = _fields_from(train["fields"])
        tok, _ = encode(system, [f.text for f in tr_fields], len(tr_fields), enc)
        t0 = time.time()
        gen = train_onehot_diffusion(
            train["labels"],
            tok.float(),
            out=root / "baselines",
            minutes=s.baseline_minutes,
            max_steps=s.max_steps,
            seed=s.seed,
            context_dim=p.tcss.context_dim,
        )
        steps = json.loads((root / "baselines" / "manifest.json").read_text())["stages"][
            "onehot_diffusion"
        ]["steps"]
        ptok, _ = encode(system, [f.text for f in fields], len(fields), enc)
        cont = parts.arrays(
            "baseline_continuous",
            lambda: {
                "labels": sample_onehot_diffusion(
                    gen, ptok.float(), p.tcss.spatial_size[0], seed=s.seed, steps=s.baseline_steps
                )
            },
        )["labels"]
        cont_seconds = time.time() - t0
        rule, kept = rule_baseline(fields, RULE_SEED + s.seed)
        rows = {}
        for name, maps, fl in (
            ("GuideGen (this run)", G["labels"], fields),
            ("continuous diffusion, rounded", cont, fields),
            ("real anatomy + rule-based tumours", rule, [fields[i] for i in kept]),
        ):
            rows[name] = {
                "n": len(maps),
                "fid_full": fid_25d(
                    draw_maps(maps), draw_maps(R["labels"]), window=MAP_WINDOW, slices=sl
                )["mean"],
                "lpips_full": lpips_25d(
                    draw_maps(maps),
                    draw_maps(R["labels"]),
                    window=MAP_WINDOW,
                    slices=sl,
                    paired=False,
                    seed=s.seed,
                ),
                "fid_tumour": fid_25d(
                    tumour_only(maps), tumour_only(R["labels"]), window=CT_WINDOW, slices=sl
                )["mean"],
                "lpips_tumour": lpips_25d(
                    tumour_only(maps),
                    tumour_only(R["labels"]),
                    window=CT_WINDOW,
                    slices=sl,
                    paired=False,
                    seed=s.seed,
                ),
                **_prompt_scores(maps, fl),
            }
        half = len(R["labels"]) // 2
        a, b = R["labels"][:half], R["labels"][half:]
        rows["real vs real (two halves)"] = {
            "n": half,
            "fid_full": fid_25d(draw_maps(a), draw_maps(b), window=MAP_WINDOW, slices=sl)["mean"],
            "lpips_full": lpips_25d(
                draw_maps(a), draw_maps(b), window=MAP_WINDOW, slices=sl, paired=True
            ),
            "fid_tumour": fid_25d(tumour_only(a), tumour_only(b), window=CT_WINDOW, slices=sl)[
                "mean"
            ],
            "lpips_tumour": lpips_25d(
                tumour_only(a), tumour_only(b), window=CT_WINDOW, slices=sl, paired=True
            ),
        }
        return {
            "rows": rows,
            "baseline_steps": steps,
            "baseline_minutes": s.baseline_minutes,
            "baseline_seconds": cont_seconds,
        }

    section(1, s1)

    # ---------------------------------------------------------------- 2. image quality
    def ct_from_real() -> dict[str, np.ndarray]:
        from ..guidegen.pipeline import encode, labels_to_ct

        say(f"CTs from {len(real_fields)} real label maps")
        cts = []
        for i in range(0, len(real_fields), 10):
            fl = real_fields[i : i + 10]
            tok, _ = encode(system, [f.text for f in fl], len(fl), enc)
            lab = torch.from_numpy(R["labels"][i : i + 10, None].astype(np.int64))
            g = torch.Generator().manual_seed(s.seed * 31 + i)
            cts.append(labels_to_ct(system, lab, tok, generator=g).numpy())
        return {"ct": np.concatenate(cts).astype(np.float32)}

    def s2() -> dict[str, Any]:
        sl = s.slices_per_axis
        from_real = parts.arrays("ct_from_real", ct_from_real)["ct"]
        half = len(R["ct"]) // 2
        rows = {
            "G (generated label maps)": {
                "fid": fid_25d(G["ct"], R["ct"], window=CT_WINDOW, slices=sl)["mean"],
                "lpips": lpips_25d(
                    G["ct"], R["ct"], window=CT_WINDOW, slices=sl, paired=False, seed=s.seed
                ),
                "fvd": fvd_volumes(R["ct"], G["ct"], s.fvd_clips),
                "lpips_pairing": "random real CT",
            },
            "R (real label maps)": {
                "fid": fid_25d(from_real, R["ct"], window=CT_WINDOW, slices=sl)["mean"],
                "lpips": lpips_25d(from_real, R["ct"], window=CT_WINDOW, slices=sl, paired=True),
                "fvd": fvd_volumes(R["ct"], from_real, s.fvd_clips),
                "lpips_pairing": "the real CT of the same label map",
            },
            "real vs real (two halves)": {
                "fid": fid_25d(R["ct"][:half], R["ct"][half:], window=CT_WINDOW, slices=sl)["mean"],
                "lpips": lpips_25d(
                    R["ct"][:half], R["ct"][half:], window=CT_WINDOW, slices=sl, paired=True
                ),
                "fvd": fvd_volumes(R["ct"][:half], R["ct"][half:], s.fvd_clips),
                "lpips_pairing": "another real CT",
            },
        }
        return {
            "rows": rows,
            "n_generated": len(G["ct"]),
            "n_real": len(R["ct"]),
            "blank": {
                "G (generated label maps)": blank_cts(G["ct"], G["labels"]),
                "R (real label maps)": blank_cts(from_real, R["labels"]),
                "real CTs": blank_cts(R["ct"], R["labels"]),
            },
        }

    section(2, s2)

    # ---------------------------------------------------------------- 3. image-mask alignment
    def s3() -> dict[str, Any]:
        from ..guidegen.run import segmenter_alignment

        from_real = parts.arrays("ct_from_real", ct_from_real)["ct"]
        if s.segmenter == "nnunet":
            return _nnunet_alignment(
                s, root, parts, say, {"G": (G["labels"], G["ct"]), "R": (R["labels"], from_real),
                                      "real": (R["labels"], R["ct"])},
            )  # fmt: skip
        g = segmenter_alignment(system, list(G["labels"]), list(G["ct"]))
        r = segmenter_alignment(system, list(R["labels"]), list(from_real))
        if g is None or r is None:
            raise BenchError(f"{system.path}: section 3 needs the run's segmenter/ stage")
        real_read = _segment_real(system, R)
        return {
            "generated_from_generated_maps": g["generated_dice"],
            "generated_from_real_maps": r["generated_dice"],
            "real_cts": real_read,
            "n": len(G["ct"]),
            "segmenter": "the run's segmenter/ stage (a small 3D UNet trained on real CTs)",
        }

    section(3, s3)

    # ---------------------------------------------------------------- 4. prompt alignment
    def s4() -> dict[str, Any]:
        from ..guidegen.control import null_site_rates
        from ..guidegen.run import _batched

        null_maps, _, _ = _batched(
            system, None, len(fields), encoder=enc, seed=s.seed + 17, with_ct=False
        )
        null = _prompt_scores(np.stack(null_maps), fields)
        cls_train = parts.arrays(
            "classifier_train", lambda: _real_cases(s.n_train, TRAIN_SEED + 1, with_ct=True)
        )
        tf = _fields_from(cls_train["fields"])
        net = train_site_classifier(
            cls_train["ct"],
            _site_index(tf),
            out=root / "classifier",
            minutes=s.classifier_minutes,
            max_steps=s.max_steps,
            seed=s.seed,
        )
        real_acc = float(np.mean(classify_sites(net, R["ct"]) == _site_index(real_fields)))
        gen_pred = classify_sites(net, G["ct"]) if "ct" in G else None
        by_site = {}
        want = _site_index(fields)
        for k, name in enumerate(SITES):
            sel = want == k
            by_site[name] = {
                "n": int(sel.sum()),
                **_prompt_scores(
                    G["labels"][sel], [f for f, m in zip(fields, sel, strict=True) if m]
                ),
                "classifier_rate": None if gen_pred is None else float(np.mean(gen_pred[sel] == k)),
            }
        return {
            "generated": _prompt_scores(G["labels"], fields),
            "text_removed": null,
            "text_removed_by_site": null_site_rates(null_maps),
            "by_site": by_site,
            "classifier": {
                "real_accuracy": real_acc,
                "generated_accuracy": None
                if gen_pred is None
                else float(np.mean(gen_pred == want)),
                "chance": 1.0 / len(SITES),
                "trained_on": len(tf),
            },
        }

    section(4, s4)

    # ---------------------------------------------------------------- 5. ablations
    def s5() -> dict[str, Any]:
        return _ablations(system, s, root, fields, R, enc, parts, say)

    section(5, s5)

    # ---------------------------------------------------------------- 6. sampler
    def s6() -> dict[str, Any]:
        sub = fields[:: max(1, len(fields) // s.n_sampler)][: s.n_sampler]
        res = {}
        for name in ("fast", "ancestral"):
            a = _generated(system, sub, seed=s.seed + 5, encoder=enc, with_ct=False, sampler=name)
            res[name] = {
                "calls": int(a["calls"]),
                "seconds": float(a["seconds"]),
                "seconds_per_map": float(a["seconds"]) / len(sub),
                **_prompt_scores(a["labels"], sub),
                "class_distance_to_real": _class_distance(a["labels"], R["labels"]),
                "fid_full": fid_25d(
                    draw_maps(a["labels"]),
                    draw_maps(R["labels"]),
                    window=MAP_WINDOW,
                    slices=s.slices_per_axis,
                )["mean"],
            }
        res["n"] = len(sub)
        res["call_ratio"] = res["ancestral"]["calls"] / max(1, res["fast"]["calls"])
        return res

    section(6, s6)

    # ---------------------------------------------------------------- 7. downstream
    def s7() -> dict[str, Any]:
        return _downstream(system, s, root, R, enc, parts, say)

    section(7, s7)

    summary.seconds = timed
    from .guidegen_report import write_guidegen_report

    write_guidegen_report(root, summary, s, system)
    return summary


def _class_distance(maps: np.ndarray, real: np.ndarray) -> float:
    from ..guidegen.control import class_histogram_distance

    return float(class_histogram_distance(maps, real))


def _segment_real(system: Any, R: dict[str, np.ndarray]) -> dict[str, float]:
    """The alignment segmenter's Dice per organ on the real CTs of this evaluation."""
    from ..segment import load_segmenter, predict

    seg = load_segmenter(system.path / "segmenter")
    pred = predict(seg, torch.from_numpy(R["ct"][:, None]))
    return _organ_dice(pred.numpy(), _on_ct_grid(R["labels"], R["ct"].shape[-1]))


#: nnU-Net dataset id of section 3's real training set (one per evaluation folder).
NNUNET_DATASET_ID = 601


def _organ_dice(pred: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    from ..guidegen._labels import GUIDEGEN_CLASSES, NUM_CLASSES, TUMOUR
    from ..segment import dice_per_class

    d = dice_per_class(pred, labels, num_classes=NUM_CLASSES)
    return {
        GUIDEGEN_CLASSES[i + 1]: float(v)
        for i, v in enumerate(d)
        if np.isfinite(v) and i + 1 != TUMOUR
    }


def _nnunet_alignment(
    s: GGEvalSettings,
    root: Path,
    parts: _Parts,
    say: Callable[[str], None],
    sets: dict[str, tuple[np.ndarray, np.ndarray]],
) -> dict[str, Any]:
    """Section 3 with nnU-Net v2 (3d_fullres, fold ``all``) trained here on ``n_train`` real
    cases, then reading each set's CTs: Dice per organ against the set's label maps."""
    from ..guidegen._labels import GUIDEGEN_CLASSES
    from ..guidegen.data import CT_SPACING, grid_affine
    from .nnunet import (
        NnunetCase,
        export_dataset,
        nnunet_env,
        plan_and_preprocess,
        predict_nnunet,
        train_nnunet,
    )

    nn_root = root / "nnunet"
    train = parts.arrays("alignment_train", lambda: _real_cases(s.n_train, TRAIN_SEED + 4))
    size = train["ct"].shape[-1]
    record = nn_root / "model.json"
    if not record.is_file():
        say(f"section 3: nnU-Net v2 on {len(train['ct'])} real cases, {s.nnunet_minutes} min")
        affine = grid_affine(size, CT_SPACING)
        labels = _on_ct_grid(train["labels"], size)
        export_dataset(
            [
                NnunetCase(f"real{i:04d}", train["ct"][i], labels[i], affine)
                for i in range(len(labels))
            ],
            nnunet_env(nn_root)["nnUNet_raw"],
            dataset_id=NNUNET_DATASET_ID,
            name="GuideGenAlignment",
            labels={name: i for i, name in enumerate(GUIDEGEN_CLASSES)},
            overwrite=True,
        )
        plan_and_preprocess(NNUNET_DATASET_ID, nn_root)
        it = min(25, s.max_steps or 25)
        model_dir = train_nnunet(
            NNUNET_DATASET_ID,
            nn_root,
            epochs=10**6 if s.max_steps is None else -(-s.max_steps // it),
            iterations_per_epoch=it,
            minutes=s.nnunet_minutes,
            seed=s.seed,
        )
        done = json.loads((model_dir / "fold_all" / "short_training.json").read_text())
        tmp = record.with_suffix(".tmp")
        tmp.write_text(json.dumps({"model": str(model_dir), **done}))
        tmp.replace(record)
    info = json.loads(record.read_text())
    cts = np.concatenate([ct for _, ct in sets.values()])
    say(f"section 3: nnU-Net reads {len(cts)} CTs")
    # one predictor process for every set (each start imports torch and nnU-Net)
    pred = predict_nnunet(info["model"], cts, spacing=CT_SPACING, work_dir=nn_root / "predict")
    shutil.rmtree(nn_root / "predict", ignore_errors=True)
    out: dict[str, Any] = {}
    start = 0
    for key, (maps, ct) in sets.items():
        out[key] = _organ_dice(pred[start : start + len(ct)], _on_ct_grid(maps, size))
        start += len(ct)
    return {
        "generated_from_generated_maps": out["G"],
        "generated_from_real_maps": out["R"],
        "real_cts": out["real"],
        "n": len(sets["G"][1]),
        "segmenter": (
            f"nnU-Net v2 (3d_fullres, fold all) trained on {len(train['ct'])} real cases for "
            f"{info['iterations']} iterations ({info['seconds'] / 60:.1f} min)"
        ),
        "nnunet": {k: info[k] for k in ("iterations", "seconds", "epochs") if k in info},
    }


# ------------------------------------------------------------------------------- ablations


def _ablations(
    system: Any,
    s: GGEvalSettings,
    root: Path,
    fields: Sequence[Any],
    R: dict[str, np.ndarray],
    enc: Any,
    parts: _Parts,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """TCSS: knowledge injection vs plain cross-attention; autoencoder: full vs no anatomy
    pyramid vs no HDR window. Each arm trains from scratch with the same budget."""
    from ..guidegen.system import load_system
    from ..guidegen.training import train_guidegen

    p = system.preset
    out: dict[str, Any] = {"tcss": {}, "autoencoder": {}}
    for arm, conditioning in (
        ("knowledge injection", "injection"),
        ("plain cross-attention", "crossattn"),
    ):
        key = f"ablation_tcss_{conditioning}"

        def arm_result(conditioning: str = conditioning, key: str = key) -> dict[str, Any]:
            folder = root / "ablations" / conditioning
            preset = dataclasses.replace(
                p, tcss=dataclasses.replace(p.tcss, conditioning=conditioning)
            )
            say(f"ablation: TCSS with {conditioning}, {s.ablation_minutes} min")
            rep = train_guidegen(
                folder,
                preset=preset,
                stages=("tcss",),
                minutes=s.ablation_minutes,
                max_steps=s.max_steps,
                seed=s.seed,
                n_labels=4 * s.n_train,
                n_ct=4,
                progress=False,
                resume=True,  # an interrupted evaluation continues the arm
            )
            arm_system = load_system(folder, stages=("tcss",))
            g = _generated(arm_system, fields, seed=s.seed, encoder=enc, with_ct=False)
            return {
                "steps": rep["tcss"]["steps"],
                "seconds": rep["tcss"]["seconds"],
                **_prompt_scores(g["labels"], fields),
                "fid_full": fid_25d(
                    draw_maps(g["labels"]),
                    draw_maps(R["labels"]),
                    window=MAP_WINDOW,
                    slices=s.slices_per_axis,
                )["mean"],
                "class_distance_to_real": _class_distance(g["labels"], R["labels"]),
            }

        out["tcss"][arm] = parts.json(key, arm_result)

    ct_set = parts.arrays(
        "ablation_ct", lambda: _real_cases(s.n_train, TRAIN_SEED + 2, with_ct=True)
    )
    for arm, change in (
        ("full (pyramid + HDR window)", {}),
        ("no anatomy pyramid", {"label_dropout": 1.0}),
        ("no HDR window", {"reconstruction_weight": 0.0, "plain_l1_weight": 1.0}),
    ):
        key = "ablation_ae_" + arm.split(" (")[0].replace(" ", "_")

        def ae_arm(change: dict[str, Any] = change, key: str = key) -> dict[str, Any]:
            return _ae_arm(p, change, ct_set, R, s, root / "ablations" / key, say)

        out["autoencoder"][arm] = parts.json(key, ae_arm)
    out["tcss_minutes"] = s.ablation_minutes
    out["ae_minutes"] = s.ae_minutes
    return out


def _ae_arm(
    p: Any,
    change: dict[str, Any],
    ct_set: dict[str, np.ndarray],
    R: dict[str, np.ndarray],
    s: GGEvalSettings,
    folder: Path,
    say: Callable[[str], None],
) -> dict[str, Any]:
    import ct_autoencoder as ca

    from ..guidegen.control import HU_RANGES, organ_hu
    from ..guidegen.stages import labels_to_ct_grid, make_autoencoder, train_autoencoder

    torch.manual_seed(s.seed)
    base = make_autoencoder(p)
    ae = ca.HDRAutoencoder(config=dataclasses.replace(base.config, **change))
    say(f"ablation: autoencoder {change or 'full'}, {s.ae_minutes} min")
    res = train_autoencoder(
        ae,
        torch.from_numpy(ct_set["ct"][:, None]),
        torch.from_numpy(ct_set["labels"][:, None].astype(np.int64)),
        run_dir=folder,
        minutes=s.ae_minutes,
        max_steps=s.max_steps,
        batch_size=p.ae_batch_size,
        seed=s.seed,
        resume=True,
    )
    ae.eval()
    use_labels = ae.config.label_dropout < 1.0
    recs = []
    with torch.no_grad():
        for i in range(0, len(R["ct"]), 8):
            x = torch.from_numpy(R["ct"][i : i + 8, None])
            lab = labels_to_ct_grid(
                torch.from_numpy(R["labels"][i : i + 8, None].astype(np.int64)), x.shape[-1]
            )
            cond = lab if use_labels else None
            z = ae.encode_stage_2_inputs(ae.normalize(x), cond)
            recs.append(ae.denormalize(ae.decode_stage_2_outputs(z, cond))[:, 0].clamp(-1024, 3071))
    rec = torch.cat(recs).numpy()
    body = R["ct"] > -900
    mae = float(np.abs(rec - R["ct"])[body].mean())
    lab_ct = _on_ct_grid(R["labels"], R["ct"].shape[-1])
    ok: dict[str, list[bool]] = {}
    err: dict[str, list[float]] = {}
    for r, real_ct, lab in zip(rec, R["ct"], lab_ct, strict=True):
        got, want = organ_hu(r, lab), organ_hu(real_ct, lab)
        for organ, (med, inside) in got.items():
            ok.setdefault(organ, []).append(inside)
            if organ in want:
                err.setdefault(organ, []).append(abs(med - want[organ][0]))
    return {
        "steps": res.step,
        "seconds": res.seconds,
        "mae_hu": mae,
        "organ_median_hu_error": float(np.mean([np.mean(v) for v in err.values()])),
        "organ_hu_in_range": float(np.mean([np.mean(v) for v in ok.values()])),
        "organs": sorted(err),
        "hu_ranges_checked": sorted(set(ok) & set(HU_RANGES)),
        "fid": fid_25d(rec, R["ct"], window=CT_WINDOW, slices=s.slices_per_axis)["mean"],
    }


# ------------------------------------------------------------------------------ downstream


def _real_tumour_cases(n: int, seed: int) -> dict[str, np.ndarray]:
    """Deformed copies of the chest template with its own, real lung tumour and real CT."""
    from ..guidegen._labels import TUMOUR
    from ..guidegen.data import _resample, load_gg_templates

    t = [x for x in load_gg_templates(["chest"]) if x.name == "chest"]
    if not t or not (t[0].labels == TUMOUR).any():
        raise BenchError("the bundled chest template with its real lung tumour is missing")
    labels, cts = [], []
    for i in range(n):
        lab, ct = _resample(t[0], np.random.default_rng([seed, i]), True)
        labels.append(lab)
        cts.append(ct)
    return {"labels": np.stack(labels).astype(np.uint8), "ct": np.stack(cts).astype(np.float32)}


def _downstream(
    system: Any,
    s: GGEvalSettings,
    root: Path,
    R: dict[str, np.ndarray],
    enc: Any,
    parts: _Parts,
    say: Callable[[str], None],
) -> dict[str, Any]:
    from ..guidegen._labels import GUIDEGEN_CLASSES, NUM_CLASSES, TUMOUR
    from ..guidegen.prompts import SITES
    from ..guidegen.run import _prompts
    from ..segment import dice_per_class, predict, train_segmenter

    need = max(s.downstream_sizes)
    per_site = -(-need // len(SITES)) if need else 0
    pool_fields = _prompts(max(per_site, 1), 2000 + s.seed)[:need] if need else []
    pool: dict[str, np.ndarray] = {}
    if need:
        # generated in chunks of 20, each cached, so a long generation resumes
        chunks = []
        for i in range(0, need, 20):
            chunk = pool_fields[i : i + 20]
            say(f"downstream pool: pairs {i + 1}-{i + len(chunk)} of {need}")
            chunks.append(
                parts.arrays(
                    f"downstream_pool_{i:05d}",
                    lambda chunk=chunk, i=i: _generated(
                        system, chunk, seed=s.seed * 100 + i, encoder=enc, with_ct=True
                    ),
                )
            )
        pool = {k: np.concatenate([c[k] for c in chunks]) for k in ("labels", "ct")}
    real_train = parts.arrays(
        "downstream_real_train", lambda: _real_cases(s.n_real_train, TRAIN_SEED + 3)
    )
    tumours = parts.arrays(
        "downstream_tumour_test", lambda: _real_tumour_cases(s.n_tumour_test, TUMOUR_SEED)
    )
    size = R["ct"].shape[-1]
    arms = []
    for k in s.downstream_sizes:
        for with_real in (False, True):
            if k == 0 and not with_real:
                continue
            arms.append((k, with_real))
    rows = []
    for k, with_real in arms:
        name = f"seg_{k}_{'real' if with_real else 'synthetic'}"

        def arm(k: int = k, with_real: bool = with_real, name: str = name) -> dict[str, Any]:
            imgs, labs = [], []
            if k:
                imgs.append(pool["ct"][:k])
                labs.append(_on_ct_grid(pool["labels"][:k], size))
            if with_real:
                imgs.append(real_train["ct"])
                labs.append(_on_ct_grid(real_train["labels"], size))
            x = torch.from_numpy(np.concatenate(imgs)[:, None].astype(np.float32))
            y = torch.from_numpy(np.concatenate(labs).astype(np.int64))
            say(f"downstream: {name} ({len(x)} pairs, {s.seg_minutes} min)")
            seg = train_segmenter(
                x, y, num_classes=NUM_CLASSES, run_dir=root / "downstream", stage=name,
                minutes=s.seg_minutes, max_steps=s.max_steps, seed=s.seed, resume=True,
                progress=False,
            )  # fmt: skip
            organ = dice_per_class(
                predict(seg, torch.from_numpy(R["ct"][:, None])).numpy(),
                _on_ct_grid(R["labels"], size),
                num_classes=NUM_CLASSES,
            )
            tum = dice_per_class(
                predict(seg, torch.from_numpy(tumours["ct"][:, None])).numpy(),
                _on_ct_grid(tumours["labels"], size),
                num_classes=NUM_CLASSES,
            )
            per = {
                GUIDEGEN_CLASSES[i + 1]: float(v)
                for i, v in enumerate(organ)
                if np.isfinite(v) and i + 1 != TUMOUR
            }
            return {
                "generated": k,
                "real": len(real_train["ct"]) if with_real else 0,
                "organ_dice": per,
                "mean_organ_dice": float(np.mean(list(per.values()))),
                "real_lung_tumour_dice": float(np.nan_to_num(tum[TUMOUR - 1])),
            }

        rows.append(parts.json(name, arm))
    return {
        "rows": rows,
        "n_test_real": len(R["ct"]),
        "n_test_tumour": len(tumours["ct"]),
        "seg_minutes": s.seg_minutes,
    }
