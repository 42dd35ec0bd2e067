"""``bench run guidegen``: gallery, prompt-alignment check and report of a GuideGen system.

What it measures (numbers go to ``DIR/report.md`` and ``DIR/alignment.json``):

* per site, prompts of that site (counts and sizes varied) -> fast sampler with guidance ->
  site hit rate (every tumour component in or on the prompted organ) and count match rate;
* the same number of samples with the text removed (null prompt): how often each site's rule is
  met by chance;
* fast sampler against the ancestral sampler on the same prompts: site and count rates, the
  class-volume distance to real demo maps, network calls;
* with the CT stages: median HU of organs in generated CTs against real ranges.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._labels import GUIDEGEN_CLASSES, NUM_CLASSES, TUMOUR
from .control import (
    HU_RANGES,
    class_histogram_distance,
    count_confusion,
    count_correlation,
    null_site_rates,
    organ_hu,
    score_maps,
    size_order,
)
from .data import load_gg_templates, make_case
from .pipeline import encode, generate
from .prompts import COUNTS, SITES, PromptFields, sample_fields
from .system import GuideGenSystem, load_system, shipped_dir

__all__ = ["alignment_check", "run_guidegen"]

log = logging.getLogger(__name__)


def _prompts(n_per_site: int, seed: int) -> list[PromptFields]:
    rng = np.random.default_rng([seed, 31337])
    out = []
    for s in SITES:
        for k in range(n_per_site):
            count = COUNTS[s][k % len(COUNTS[s])]
            out.append(
                sample_fields(
                    rng, site=s, count=count, size=("small", "large")[(k // len(COUNTS[s])) % 2]
                )
            )
    return out


def _batched(
    system: GuideGenSystem,
    fields: list[PromptFields] | None,
    n: int,
    *,
    encoder: Any,
    seed: int,
    batch: int = 10,
    **kw: Any,
) -> tuple[list[np.ndarray], int, list[np.ndarray]]:
    maps, cts, calls = [], [], 0
    for i in range(0, n, batch):
        b = min(batch, n - i)
        texts = None if fields is None else [f.text for f in fields[i : i + b]]
        counts = None if fields is None else [f.count for f in fields[i : i + b]]
        tok, mask = encode(system, texts, b, encoder)
        g = torch.Generator().manual_seed(seed * 7919 + i)
        res = generate(system, tok, mask, generator=g, counts=counts, **kw)
        maps += [m.numpy() for m in res.labels]
        if res.ct is not None:
            cts += [c.numpy() for c in res.ct]
        calls = res.calls
    return maps, calls, cts


def alignment_check(
    system: GuideGenSystem,
    *,
    n_per_site: int = 8,
    n_ancestral: int = 5,
    seed: int = 0,
    guidance: float | None = None,
    encoder: Any = None,
    steps: int | None = None,
) -> dict[str, Any]:
    """Measure prompt alignment (module docstring) with label maps only; returns a JSON-ready dict."""
    from ..text import load_text_encoder

    enc = encoder if encoder is not None else load_text_encoder(system.text_encoder)
    fields = _prompts(n_per_site, seed)

    def fast_maps(**kw: Any) -> tuple[list[np.ndarray], int]:
        out, n_calls, _ = _batched(
            system,
            fields,
            len(fields),
            encoder=enc,
            seed=seed,
            guidance=guidance,
            with_ct=False,
            steps=steps,
            **kw,
        )
        return out, n_calls

    t0 = time.time()
    maps, calls = fast_maps()
    fast = score_maps(maps, fields)
    t_fast = time.time() - t0
    cw = system.preset.count_weight
    if cw > 0:  # the same prompts and draws without the count guidance: knowledge injection alone
        plain_maps, _ = fast_maps(count_weight=0.0)
        plain = score_maps(plain_maps, fields)
    null_maps, null_calls, _ = _batched(
        system, None, len(fields), encoder=enc, seed=seed + 1, with_ct=False, steps=steps
    )
    null = null_site_rates(null_maps)
    null_text = score_maps(
        null_maps, fields
    )  # the same prompts' fields, scored on text-removed maps
    templates = load_gg_templates()
    real_cases = [make_case(templates, 12345, i, with_ct=False) for i in range(40)]
    real = np.stack([c.labels for c in real_cases])
    real_score = score_maps(list(real), [c.fields for c in real_cases])
    res: dict[str, Any] = {
        "n_per_site": n_per_site,
        "guidance": system.preset.guidance if guidance is None else guidance,
        "fast": {
            **asdict(fast),
            "calls_per_sample": calls,
            "seconds": t_fast,
            "class_distance_to_real": class_histogram_distance(np.stack(maps), real),
            "count_confusion": count_confusion(maps, fields),
            "count_correlation": count_correlation(maps, fields),
            "size": size_order(maps, fields),
        },
        "count_weight": cw,
        "real_maps": {
            "site_rate": real_score.site_rate,
            "dominant_rate": real_score.dominant_rate,
            "count_rate": real_score.count_rate,
            "size": size_order(list(real), [c.fields for c in real_cases]),
            "n": real_score.n,
        },
        "text_removed": {
            "site_rate_by_site": null,
            "dominant_rate_by_site": null_site_rates(null_maps, rule="dominant"),
            "dominant_rate_for_prompts": null_text.dominant_rate,
            "site_rate_for_prompts": null_text.site_rate,
            "count_rate_for_prompts": null_text.count_rate,
            "count_correlation_for_prompts": count_correlation(null_maps, fields),
            "size_for_prompts": size_order(null_maps, fields),
            "tumour_rate": null_text.tumour_rate,
            "calls_per_sample": null_calls,
        },
        "chance_site_rate": float(np.mean(list(null.values()))),
        "chance_dominant_rate": float(
            np.mean(list(null_site_rates(null_maps, rule="dominant").values()))
        ),
    }
    if cw > 0:
        res["fast_without_count_guidance"] = {
            "site_rate": plain.site_rate,
            "dominant_rate": plain.dominant_rate,
            "count_rate": plain.count_rate,
            "tumour_rate": plain.tumour_rate,
            "count_confusion": count_confusion(plain_maps, fields),
            "count_correlation": count_correlation(plain_maps, fields),
            "size": size_order(plain_maps, fields),
        }
    if n_ancestral > 0:
        sub = [f for k, f in enumerate(fields) if k % n_per_site < n_ancestral // len(SITES) + 1][
            :n_ancestral
        ]
        t1 = time.time()
        a_maps, a_calls, _ = _batched(
            system,
            sub,
            len(sub),
            encoder=enc,
            seed=seed + 2,
            guidance=guidance,
            sampler="ancestral",
            with_ct=False,
        )
        f_maps, f_calls, _ = _batched(
            system,
            sub,
            len(sub),
            encoder=enc,
            seed=seed + 2,
            guidance=guidance,
            sampler="fast",
            with_ct=False,
            steps=steps,
        )
        a, f = score_maps(a_maps, sub), score_maps(f_maps, sub)
        res["sampler"] = {
            "n": len(sub),
            "ancestral": {
                "site_rate": a.site_rate,
                "count_rate": a.count_rate,
                "calls": a_calls,
                "class_distance_to_real": class_histogram_distance(np.stack(a_maps), real),
            },
            "fast": {
                "site_rate": f.site_rate,
                "count_rate": f.count_rate,
                "calls": f_calls,
                "class_distance_to_real": class_histogram_distance(np.stack(f_maps), real),
            },
            "seconds": time.time() - t1,
        }
    return res


_PALETTE = (
    np.array(
        [
            [0, 0, 0],
            [120, 60, 160],
            [230, 200, 60],
            [180, 80, 60],
            [240, 160, 120],
            [250, 220, 160],
            [90, 160, 230],
            [250, 180, 200],
            [200, 140, 100],
            [170, 120, 90],
            [120, 200, 220],
            [200, 40, 60],
            [235, 235, 235],
            [210, 210, 180],
            [90, 200, 120],
            [60, 90, 200],
            [160, 110, 60],
            [230, 60, 40],
            [70, 70, 220],
            [60, 170, 90],
            [255, 0, 255],
        ],
        dtype=np.float32,
    )
    / 255.0
)


def _gallery_png(
    path: Path, maps: list[np.ndarray], cts: list[np.ndarray], titles: list[str]
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = 2 if cts else 1
    fig, axes = plt.subplots(rows, len(maps), figsize=(2.2 * len(maps), 2.4 * rows), squeeze=False)
    for j, m in enumerate(maps):
        tum = np.argwhere(m == TUMOUR)
        y = int(np.round(tum[:, 1].mean())) if len(tum) else m.shape[1] // 2
        axes[0, j].imshow(np.rot90(_PALETTE[m[:, y, :]]), interpolation="nearest")
        axes[0, j].set_title(titles[j], fontsize=6)
        if cts:
            f = cts[j].shape[1] // m.shape[1]
            axes[1, j].imshow(
                np.rot90(cts[j][:, y * f + f // 2, :]), cmap="gray", vmin=-200, vmax=250
            )
        for a in axes[:, j]:
            a.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_guidegen(
    out: str | Path,
    *,
    run: str | Path | None = None,
    n_per_site: int = 8,
    n_ancestral: int = 5,
    seed: int = 0,
    gallery_n: int = 2,
) -> dict[str, Any]:
    """Gallery + alignment + report of a system (default: the shipped demo); returns the numbers.

    ``out`` also becomes a run folder: the system's manifest and checkpoints are copied into it
    when it has none, so ``bench synth guidegen --run out`` works on it.
    """
    from ..text import load_text_encoder

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    system = load_system(run)
    if not (out / "guidegen.json").exists():
        # make DIR a run folder too (bench synth guidegen --run DIR, bench perf, bench eval)
        import shutil

        for item in system.path.iterdir():
            if item.name in ("guidegen.json", "tcss", "autoencoder", "generator", "segmenter"):
                dst = out / item.name
                (shutil.copytree if item.is_dir() else shutil.copy2)(item, dst)
        if (system.path / "README.md").exists():
            shutil.copy2(system.path / "README.md", out / "MODEL_CARD.md")
    enc = load_text_encoder(system.text_encoder)
    t0 = time.time()
    align = alignment_check(
        system, n_per_site=n_per_site, n_ancestral=n_ancestral, seed=seed, encoder=enc
    )
    # gallery: site x count, with CT
    rng = np.random.default_rng([seed, 99])
    gal = [
        sample_fields(rng, site=s, count=c, size="large" if c == 1 else "small")
        for s in SITES
        for c in COUNTS[s][:gallery_n]
    ]
    maps, _, cts = _batched(system, gal, len(gal), encoder=enc, seed=seed + 3, with_ct=True)
    hu: dict[str, list[float]] = {}
    ok: dict[str, list[bool]] = {}
    for m, c in zip(maps, cts, strict=False):
        f = c.shape[0] // m.shape[0]
        for organ, (med, inside) in organ_hu(c, m.repeat(f, 0).repeat(f, 1).repeat(f, 2)).items():
            hu.setdefault(organ, []).append(med)
            ok.setdefault(organ, []).append(inside)
    titles = [f"{f.site} x{f.count} {f.size}" for f in gal]
    _gallery_png(out / "gallery.png", maps, cts, titles)
    nmaps, _, ncts = _batched(
        system, None, min(6, len(gal)), encoder=enc, seed=seed + 4, with_ct=True
    )
    _gallery_png(out / "gallery_text_removed.png", nmaps, ncts, ["text removed"] * len(nmaps))
    align["ct"] = {
        "has_ct": system.has_ct,
        "organ_hu_median": {k: float(np.median(v)) for k, v in hu.items()},
        "organ_hu_in_range": {k: float(np.mean(v)) for k, v in ok.items()},
        "hu_ranges": {k: list(v) for k, v in HU_RANGES.items()},
    }
    if system.has_ct:
        align["ct"]["segmenter"] = segmenter_alignment(system, maps + nmaps, cts + ncts)
    align["seconds_total"] = time.time() - t0
    # the shipped weights are named, not located (a path of this machine means nothing elsewhere)
    shipped = system.path.resolve() == shipped_dir().resolve()
    align["system"] = "guidegen_demo (shipped)" if shipped else str(system.path)
    (out / "alignment.json").write_text(json.dumps(align, indent=1))
    _report(out, align, system)
    return align


def segmenter_alignment(
    system: GuideGenSystem, maps: list[np.ndarray], cts: list[np.ndarray]
) -> dict[str, Any] | None:
    """Dice per organ between generated label maps and the alignment segmenter's reading of
    the generated CTs (``None`` when the system has no ``segmenter/`` stage).

    The segmenter was trained on real CTs only; its Dice on held-out real CTs (recorded at
    training) is the reference the generated pairs are read against.
    """
    from ..segment import dice_per_class, load_segmenter, predict

    folder = system.path / "segmenter"
    if not (folder / "config.json").exists():
        return None
    seg = load_segmenter(folder)
    f = cts[0].shape[0] // maps[0].shape[0]
    lab = np.stack([m.repeat(f, 0).repeat(f, 1).repeat(f, 2) for m in maps])
    pred = predict(seg, torch.from_numpy(np.stack(cts)[:, None].astype(np.float32)))
    d = dice_per_class(pred.numpy(), lab, num_classes=NUM_CLASSES)
    real = system.info.get("stages", {}).get("segmenter", {}).get("real_dice", {})
    generated = {
        GUIDEGEN_CLASSES[i + 1]: float(v)
        for i, v in enumerate(d)
        if np.isfinite(v) and i + 1 != TUMOUR
    }
    return {"n": len(cts), "generated_dice": generated, "real_dice": real}


def _size_lines(f: dict[str, Any], n: dict[str, Any], r: dict[str, Any]) -> list[str]:
    if "size" not in f:  # a report written before the size check
        return []
    z, zn, zr = f["size"], n["size_for_prompts"], r["size"]
    return [
        f"- Size: median voxels per tumour {z['small_voxels']:.1f} for `small` prompts and "
        f"{z['large_voxels']:.1f} for `large` (real demo maps {zr['small_voxels']:.1f} and "
        f"{zr['large_voxels']:.1f}); a `large` sample has the bigger tumours in "
        f"**{z['order_rate']:.2f}** of pairs (0.5 = size ignored; text removed {zn['order_rate']:.2f}, "
        f"real maps {zr['order_rate']:.2f}).",
    ]


def _count_guidance_lines(a: dict[str, Any]) -> list[str]:
    if "fast_without_count_guidance" not in a:
        return ["- Count guidance is off in this system (`count_weight` 0)."]
    p = a["fast_without_count_guidance"]
    return [
        f"- The count guidance (weight {a['count_weight']:g}) steers each map towards the "
        f"prompted number of tumour pieces. Without it, with the knowledge injection alone and the "
        f"same prompts and draws, the count matches in **{p['count_rate']:.2f}** (site "
        f"{p['site_rate']:.2f}, dominant {p['dominant_rate']:.2f}). By prompted count, samples "
        "with 0, 1, 2, 3, 4+ pieces: "
        + "; ".join(
            f"{k}: " + "/".join(str(v) for v in row) for k, row in p["count_confusion"].items()
        )
        + ".",
    ]


def _report(out: Path, a: dict[str, Any], system: GuideGenSystem) -> None:
    f, n = a["fast"], a["text_removed"]
    lines = [
        "# GuideGen: prompt alignment report",
        "",
        f"System: `{Path(a['system']).name}` (preset `{system.preset.name}`, TCSS {system.preset.tcss.spatial_size[0]}^3 "
        f"x {system.preset.label_spacing:g} mm, guidance {a['guidance']}). Total time {a['seconds_total']:.0f} s.",
        "",
        "## Tumour site and count (fast sampler)",
        "",
        "| site | in/on prompted organ, with text | same rule, text removed |",
        "|---|---|---|",
    ]
    for s in SITES:
        lines.append(
            f"| {s} | {f['per_site'].get(s, float('nan')):.2f} | {n['site_rate_by_site'][s]:.2f} |"
        )
    r = a["real_maps"]
    lines += [
        f"| **all** | **{f['site_rate']:.2f}** (target >= 0.80) | **{a['chance_site_rate']:.2f}** (chance) |",
        "",
        f"- Same prompts with the text removed: {n['site_rate_for_prompts']:.2f} meet their own site's rule.",
        f"- Stricter rule (each tumour's dominant neighbouring organ is the prompted one): "
        f"{f['dominant_rate']:.2f} with text, {n['dominant_rate_for_prompts']:.2f} for the same prompts with the "
        f"text removed, chance {a['chance_dominant_rate']:.2f}; real demo maps reach {r['dominant_rate']:.2f} "
        f"(a tumour can fill most of a small organ), and {r['site_rate']:.2f} under the touch rule.",
        f"- Count matches the prompt: **{f['count_rate']:.2f}** (target >= 0.70); text removed: {n['count_rate_for_prompts']:.2f}.",
        *_count_guidance_lines(a),
        *(
            [
                f"- Count rank correlation (Spearman, prompted vs generated components): "
                f"**{f['count_correlation']:.2f}** with text, {n['count_correlation_for_prompts']:.2f} with the "
                "text removed (0 = the count is ignored)."
            ]
            if "count_correlation" in f
            else []
        ),
        f"- Maps with a tumour: {f['tumour_rate']:.2f} with text, {n['tumour_rate']:.2f} without.",
        *_size_lines(f, n, r),
        "",
        "Generated tumour components by prompted count (with text):",
        "",
        "| prompted | 0 | 1 | 2 | 3 | 4+ |",
        "|---|---|---|---|---|---|",
        *[
            f"| {k} | " + " | ".join(str(v) for v in row) + " |"
            for k, row in f.get("count_confusion", {}).items()
        ],
        "",
        f"- {f['n']} samples with text, {f['n']} without; {f['calls_per_sample']} network calls per sample "
        f"(guidance batches prompt and null prompt in one call).",
        f"- Class-volume distance to real demo maps (total variation): {f['class_distance_to_real']:.3f}.",
        "",
    ]
    if "sampler" in a:
        s = a["sampler"]
        lines += [
            "## Fast vs ancestral sampler",
            "",
            "| sampler | calls | site | count | class distance |",
            "|---|---|---|---|---|",
        ]
        for k in ("ancestral", "fast"):
            lines.append(
                f"| {k} | {s[k]['calls']} | {s[k]['site_rate']:.2f} | {s[k]['count_rate']:.2f} | "
                f"{s[k]['class_distance_to_real']:.3f} |"
            )
        lines += [
            "",
            f"{s['n']} prompts each; the fast sampler uses {s['ancestral']['calls'] / max(1, s['fast']['calls']):.0f}x fewer calls.",
            "",
        ]
    c = a["ct"]
    lines += ["## CT", ""]
    if c["has_ct"]:
        lines += [
            "Median HU of each organ (where the label map puts it, eroded once) in the generated CTs:",
            "",
            "| organ | median HU | real range | in range (fraction of samples) |",
            "|---|---|---|---|",
        ]
        for k, v in c["organ_hu_median"].items():
            lo, hi = c["hu_ranges"][k]
            lines.append(
                f"| {k} | {v:.0f} | {lo:.0f} to {hi:.0f} | {c['organ_hu_in_range'][k]:.2f} |"
            )
        sg = c.get("segmenter")
        if sg:
            lines += [
                "",
                f"A segmenter trained on real CTs only reads the {sg['n']} generated CTs; Dice between its "
                "prediction and the label map the CT was generated from, against its Dice on held-out real CTs:",
                "",
                "| organ | Dice, generated CT vs its label map | Dice, real CT (held out) |",
                "|---|---|---|",
            ]
            for k, v in sorted(sg["generated_dice"].items(), key=lambda kv: -kv[1]):
                r = sg["real_dice"].get(k)
                lines.append(f"| {k} | {v:.2f} | {'' if r is None else f'{r:.2f}'} |")
    else:
        lines.append("This system has no CT stages (label maps only).")
    st = system.info.get("stages", {})
    if st:
        lines += ["", "## Training (from the run folder)", ""]
        for name, r in st.items():
            if not isinstance(r, dict):
                continue
            bits = [f"{r['steps']} steps" if "steps" in r else ""]
            if "seconds" in r:
                bits.append(f"{r['seconds'] / 60:.1f} min")
            if "autoencoder_mae_hu" in r:
                bits.append(
                    f"held-out MAE {r['autoencoder_mae_hu']:.1f} HU against {r['baseline_mae_hu']:.1f} HU for the "
                    f"non-learned baseline (area down to {r['baseline_grid']}^3, trilinear up: as many numbers as the latent)"
                )
            if "real_dice" in r:
                bits.append(
                    f"Dice on {r.get('held_out', '?')} held-out real CTs: "
                    + ", ".join(
                        f"{k} {v:.2f}"
                        for k, v in sorted(r["real_dice"].items(), key=lambda kv: -kv[1])[:6]
                    )
                )
            shown = {"steps", "seconds", "autoencoder_mae_hu", "baseline_mae_hu", "baseline_grid"}
            shown |= {"real_dice", "held_out", "log", "state"}
            bits += [
                f"{k.replace('_', ' ')} {v}"
                for k, v in r.items()
                if k not in shown and isinstance(v, (int, str))
            ]
            lines.append(f"- {name}: " + ", ".join(b for b in bits if b))
    lines += [
        "",
        "![gallery](gallery.png)",
        "",
        "Text removed:",
        "",
        "![text removed](gallery_text_removed.png)",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
