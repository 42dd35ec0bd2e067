"""``OUT/report.md`` of ``bench eval guidegen``: one table per section, with its figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def _f(v: Any, fmt: str = ".2f") -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    return format(v, fmt)


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _figures(root: Path) -> dict[str, str]:
    """Mask and CT galleries and the downstream plot from the cached parts; returns names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..guidegen.run import _PALETTE

    parts = root / "parts"
    made: dict[str, str] = {}

    def load(name: str) -> dict[str, np.ndarray] | None:
        path = parts / f"{name}.npz"
        if not path.exists():
            return None
        with np.load(path) as z:
            return {k: z[k] for k in z.files}

    gen, real = load("generated"), load("real")
    cont = load("baseline_continuous")
    if gen is not None and real is not None:
        rows = [("GuideGen", gen["labels"]), ("real", real["labels"])]
        if cont is not None:
            rows.insert(1, ("continuous diff.", cont["labels"]))
        n = 6
        fig, axes = plt.subplots(len(rows), n, figsize=(1.6 * n, 1.7 * len(rows)), squeeze=False)
        for i, (name, maps) in enumerate(rows):
            for j in range(n):
                m = maps[j % len(maps)]
                y = m.shape[1] // 2
                axes[i, j].imshow(np.rot90(_PALETTE[m[:, y, :]]), interpolation="nearest")
                axes[i, j].axis("off")
            axes[i, 0].set_title(name, fontsize=7, loc="left")
        fig.tight_layout()
        fig.savefig(root / "masks.png", dpi=110)
        plt.close(fig)
        made["masks"] = "masks.png"
    from_real = load("ct_from_real")
    if gen is not None and real is not None and "ct" in gen:
        rows = [("G: generated map", gen["ct"])]
        if from_real is not None:
            rows.append(("R: real map", from_real["ct"]))
        rows.append(("real CT", real["ct"]))
        n = 6
        fig, axes = plt.subplots(len(rows), n, figsize=(1.6 * n, 1.7 * len(rows)), squeeze=False)
        for i, (name, cts) in enumerate(rows):
            for j in range(n):
                c = cts[j % len(cts)]
                axes[i, j].imshow(
                    np.rot90(c[:, c.shape[1] // 2, :]), cmap="gray", vmin=-200, vmax=250
                )
                axes[i, j].axis("off")
            axes[i, 0].set_title(name, fontsize=7, loc="left")
        fig.tight_layout()
        fig.savefig(root / "cts.png", dpi=110)
        plt.close(fig)
        made["cts"] = "cts.png"
    s7 = parts / "section7.json"
    if s7.exists():
        rows = json.loads(s7.read_text())["rows"]
        fig, axes = plt.subplots(1, 2, figsize=(7.5, 2.8))
        for with_real, style in ((False, "o--"), (True, "s-")):
            sel = [r for r in rows if (r["real"] > 0) == with_real]
            if not sel:
                continue
            k = [r["generated"] for r in sel]
            label = "generated + real" if with_real else "generated only"
            axes[0].plot(k, [r["mean_organ_dice"] for r in sel], style, label=label)
            axes[1].plot(k, [r["real_lung_tumour_dice"] for r in sel], style, label=label)
        axes[0].set_title("organs, held-out real CTs", fontsize=8)
        axes[1].set_title("real lung tumour", fontsize=8)
        for a in axes:
            a.set_xlabel("generated pairs")
            a.set_ylabel("Dice")
            a.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(root / "downstream.png", dpi=110)
        plt.close(fig)
        made["downstream"] = "downstream.png"
    return made


def write_guidegen_report(root: Path, summary: Any, settings: Any, system: Any) -> Path:
    """Write ``root/report.md`` from every section result cached under ``root/parts``."""
    from dataclasses import asdict

    res: dict[int, Any] = {}
    for k in range(1, 8):
        path = root / "parts" / f"section{k}.json"
        if path.exists():
            res[k] = json.loads(path.read_text())
    fig = _figures(root)
    shipped = "shipped" if system.path.name == "guidegen_demo" else "run"
    lines = [
        "# GuideGen evaluation",
        "",
        f"System: {system.path.name} ({shipped}), preset `{system.preset.name}`. Every number "
        "below was measured by `bench eval guidegen` on prompts of its own seed, against real "
        "demo cases (real templates deformed; tumours rule-based except the chest's real one).",
        "",
        f"Settings: `{json.dumps(asdict(settings))}`",
        "",
    ]
    r = res.get(1)
    if r:
        lines += [
            "## 1. Mask quality (Tab. 1)",
            "",
            "FID (2.5D Inception, mean of three axes) and LPIPS (each map against a random real "
            "map; real halves: paired) of label maps against real ones; site and count rates on "
            "the same prompts. Lower FID/LPIPS is better.",
            "",
        ]
        rows = []
        for name, v in r["rows"].items():
            rows.append(
                [
                    name,
                    str(v["n"]),
                    _f(v["fid_full"], ".1f"),
                    _f(v["lpips_full"], ".3f"),
                    _f(v["fid_tumour"], ".1f"),
                    _f(v["lpips_tumour"], ".3f"),
                    _f(v.get("site_rate")),
                    _f(v.get("count_rate")),
                ]
            )
        lines += _table(
            ["maps", "n", "FID full", "LPIPS full", "FID tumour", "LPIPS tumour", "site", "count"],
            rows,
        )
        lines += [
            "",
            f"The continuous baseline trained {r['baseline_steps']} steps "
            f"({r['baseline_minutes']} min budget) here; the rule-based row is how the real demo "
            "maps were made, so it shows the reference's own level, not a competitor.",
            "",
        ]
        if "masks" in fig:
            lines += [f"![label maps]({fig['masks']})", ""]
    r = res.get(2)
    if r:
        lines += [
            "## 2. Image quality (Tab. 2)",
            "",
            f"{r['n_generated']} generated CTs against {r['n_real']} real CTs (32^3 demo grid).",
            "",
        ]
        lines += _table(
            ["CTs", "FID (2.5D)", "LPIPS", "FVD (I3D)", "LPIPS pairs each CT with"],
            [
                [
                    k,
                    _f(v["fid"], ".1f"),
                    _f(v["lpips"], ".3f"),
                    _f(v["fvd"], ".1f"),
                    v["lpips_pairing"],
                ]
                for k, v in r["rows"].items()
            ],
        )
        lines.append("")
        if "blank" in r:
            b = r["blank"]
            lines += [
                "Blank CTs (under half the voxels of the map's solid organs above -900 HU): "
                + ", ".join(f"{k} {len(v)}" for k, v in b.items())
                + ". They count in the FID, LPIPS and FVD above.",
                "",
            ]
        if "cts" in fig:
            lines += [f"![CTs]({fig['cts']})", ""]
    r = res.get(3)
    if r:
        lines += [
            "## 3. Image-mask alignment (Tab. 3)",
            "",
            "Dice per organ between each label map and a segmenter trained on real CTs only "
            "reading the CT; the real row is its reading of real CTs. Segmenter: "
            + r.get("segmenter", "the run's segmenter/ stage")
            + ".",
            "",
        ]
        organs = sorted(r["real_cts"])
        rows = []
        for name, key in (
            ("G: CT from generated map", "generated_from_generated_maps"),
            ("R: CT from real map", "generated_from_real_maps"),
            ("real CT", "real_cts"),
        ):
            d = r[key]
            vals = [d.get(o) for o in organs]
            mean = np.mean([v for v in vals if v is not None]) if vals else float("nan")
            rows.append([name, _f(float(mean)), *[_f(v) for v in vals]])
        lines += _table(["CT", "mean", *organs], rows)
        lines.append("")
    r = res.get(4)
    if r:
        g, n, c = r["generated"], r["text_removed"], r["classifier"]
        lines += [
            "## 4. Prompt alignment (Fig. 3b, Tab. 4)",
            "",
            f"- Tumour site: **{g['site_rate']:.2f}** (text removed: {n['site_rate']:.2f}); "
            f"tumour count: **{g['count_rate']:.2f}** (text removed: {n['count_rate']:.2f}).",
            f"- Site classifier (a 3D CNN trained on {c['trained_on']} real CTs): accuracy "
            f"{c['real_accuracy']:.2f} on real CTs, **{_f(c['generated_accuracy'])}** on generated "
            f"CTs against their prompted site (chance {c['chance']:.2f}).",
            "",
        ]
        lines += _table(
            ["site", "n", "site rate", "count rate", "classifier"],
            [
                [k, str(v["n"]), _f(v["site_rate"]), _f(v["count_rate"]), _f(v["classifier_rate"])]
                for k, v in r["by_site"].items()
            ],
        )
        lines.append("")
    r = res.get(5)
    if r:
        lines += [
            "## 5. Ablations (Tab. 7)",
            "",
            f"Each arm trained from scratch here with the same budget (TCSS {r['tcss_minutes']} "
            f"min, autoencoder {r['ae_minutes']} min); the shipped system trained far longer, so "
            "compare arms with each other.",
            "",
        ]
        lines += _table(
            ["TCSS", "steps", "site", "count", "FID full", "class distance"],
            [
                [k, str(v["steps"]), _f(v["site_rate"]), _f(v["count_rate"]),
                 _f(v["fid_full"], ".1f"), _f(v["class_distance_to_real"], ".3f")]
                for k, v in r["tcss"].items()
            ],
        )  # fmt: skip
        lines.append("")
        lines += _table(
            ["autoencoder", "steps", "MAE HU (body)", "organ median HU error", "organ HU in range", "FID"],
            [
                [k, str(v["steps"]), _f(v["mae_hu"], ".1f"), _f(v["organ_median_hu_error"], ".1f"),
                 _f(v["organ_hu_in_range"]), _f(v["fid"], ".1f")]
                for k, v in r["autoencoder"].items()
            ],
        )  # fmt: skip
        lines += [
            "",
            "The autoencoder arms are scored by reconstructing held-out real CTs (the latent "
            "generator is not retrained per arm).",
            "",
        ]
    r = res.get(6)
    if r:
        f, a = r["fast"], r["ancestral"]
        lines += ["## 6. Sampler", "", f"{r['n']} prompts.", ""]
        lines += _table(
            ["sampler", "network calls", "s / map", "site", "count", "class distance", "FID full"],
            [
                [k, str(v["calls"]), _f(v["seconds_per_map"], ".1f"), _f(v["site_rate"]),
                 _f(v["count_rate"]), _f(v["class_distance_to_real"], ".3f"), _f(v["fid_full"], ".1f")]
                for k, v in (("fast", f), ("ancestral", a))
            ],
        )  # fmt: skip
        lines += ["", f"The fast sampler uses {r['call_ratio']:.0f}x fewer network calls.", ""]
    r = res.get(7)
    if r:
        lines += [
            "## 7. Downstream segmentation (Tab. 5-6, Fig. 4)",
            "",
            f"A segmenter ({r['seg_minutes']} min each) trained on generated pairs, with and "
            f"without real pairs; organ Dice on {r['n_test_real']} held-out real CTs, tumour Dice "
            f"on {r['n_test_tumour']} deformed copies of the real lung tumour case.",
            "",
        ]
        lines += _table(
            ["generated", "real", "mean organ Dice", "real lung tumour Dice"],
            [
                [str(v["generated"]), str(v["real"]), _f(v["mean_organ_dice"]),
                 _f(v["real_lung_tumour_dice"])]
                for v in r["rows"]
            ],
        )  # fmt: skip
        lines.append("")
        if "downstream" in fig:
            lines += [f"![downstream]({fig['downstream']})", ""]
    if summary.seconds:
        lines += [
            "## Time",
            "",
            "Minutes each section took when it was computed: "
            + ", ".join(f"section {k}: {v / 60:.1f}" for k, v in sorted(summary.seconds.items()))
            + ".",
            "",
        ]
    path = root / "report.md"
    path.write_text("\n".join(lines))
    return path
