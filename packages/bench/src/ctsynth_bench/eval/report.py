"""The Markdown report of ``bench eval lesiondiffusion`` (``OUT/report.md``)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

__all__ = ["write_eval_report"]


def _f(v: Any, fmt: str = ".2f") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return format(v, fmt)


def _pct(v: Any) -> str:
    return (
        "n/a"
        if v is None or (isinstance(v, float) and not math.isfinite(v))
        else f"{100 * v:.0f} %"
    )


def _img(root: Path, path: Path, alt: str) -> str:
    return f"![{alt}]({os.path.relpath(path, root)})"


def _minutes(sec: float) -> str:
    return f"{sec / 60:.1f} min" if sec >= 60 else f"{sec:.0f} s"


def _system_label(folder: str) -> str:
    from ..lesiondiffusion.system import shipped_weights_dir

    if Path(folder).resolve() == shipped_weights_dir().resolve():
        return "the shipped demo weights"
    return f"run folder `{Path(folder).name}`"


def _budget(res: dict[str, Any]) -> str:
    steps = {
        f"{st.get('lmnet', '?')} / {st.get('linet', '?')}"
        for st in (row["system"]["steps"] for row in res.values())
    }
    return "LMNet / LINet steps " + ", ".join(sorted(steps))


def _ablation_md(res: dict[str, Any], types: list[str]) -> list[str]:
    cols = list(
        dict.fromkeys(
            (t, test)
            for row in res.values()
            for t in types
            for test in row["downstream"].get(t, {})
        )
    )
    lines = [
        "| system | steps (LMNet / LINet) | sphericity round - irregular (p) | lesion - organ HU "
        "hypo / iso / hyper | ordered | size within 30 % | realised attributes agree with the "
        "rules | " + " | ".join(f"Dice {t} on {test}" for t, test in cols) + " |",
        "|---" * (7 + len(cols)) + "|",
    ]
    for label, row in res.items():
        c = row["control"]
        a = row["agreement"]
        st = row["system"]["steps"]
        dh = c.get("delta_hu") or {}
        dice = [_f(row["downstream"].get(t, {}).get(test, {}).get("dice_mean")) for t, test in cols]
        lines.append(
            f"| {label} | {st.get('lmnet', '?')} / {st.get('linet', '?')} | "
            f"{_f(c['sphericity_gap'], '+.3f')} ({_f(c['shape_p'], '.2g')}) | "
            f"{_f(dh.get('hypodense'), '+.0f')} / {_f(dh.get('isodense'), '+.0f')} / "
            f"{_f(dh.get('hyperdense'), '+.0f')} | {_pct(c['ordered_fraction'])} | "
            f"{_pct(c['size_within_30'])} | {_pct(a['rule_agreement'])} of {a['rule_checks']} | "
            + " | ".join(dice)
            + " |"
        )
    return lines


def _general_md(res: dict[str, Any]) -> list[str]:
    lines = [
        "| arm | lesions | location as reported | shell in the organ | median size error | size "
        "within 30 % | realised attributes agree with the rules |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, row in res["rows"].items():
        a = dict(row["agreement"])
        if row.get("system") is None:  # the rule-based report states the realised size
            a["size_error"] = a["size_within_30"] = None
        lines.append(
            f"| {label} | {a['n']} | {_pct(a['location_held'])} | {_pct(a['shell_in_organ'])} | "
            f"{_pct(a['size_error'])} | {_pct(a['size_within_30'])} | "
            f"{_pct(a['rule_agreement'])} of {a['rule_checks']} |"
        )
    lines += ["", "Per rule (attribute value, quantity: agreement of each arm):", ""]
    rules: dict[tuple[str, str, str], dict[str, str]] = {}
    for label, row in res["rows"].items():
        for r in row["agreement"]["per_rule"]:
            key = (r["attribute"], r["value"], r["quantity"])
            rules.setdefault(key, {})[label] = f"{_pct(r['agreement'])} (n={r['n']})"
    arms = list(res["rows"])
    lines += [
        "| attribute | value | quantity | " + " | ".join(arms) + " |",
        "|---|---|---|" + "---|" * len(arms),
    ]
    for key in sorted(rules):
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | "
            + " | ".join(rules[key].get(a, "-") for a in arms)
            + " |"
        )
    return lines


def _data_line(r: dict[str, Any], s: Any) -> str:
    out = "**Data.** Templates: the bundled real CTs `abdomen` and `chest`."
    if not {"quality", "downstream", "ablation", "generalisation"} & set(r):
        return out
    given = r.get("data_dir")
    train = (
        f"the given lesion set `{Path(given).name}`"
        if given
        else f"{s.n_rule_train} rule-based cases (14 lesion types cycled)"
    )
    return (
        f"{out} Training set: {train}. Held-out test set: {s.n_rule_test} rule-based cases (14 "
        f"types cycled, another seed). LesionDiffusion lesions: {s.n_generated} per type. Real "
        f"lung tumours: {', '.join(s.real_train)} for training, {', '.join(s.real_test)} for "
        "testing (`bench data fetch`). Lesion crops for sections 2-3: 48^3 voxels at 1.5 mm."
    )


def write_eval_report(summary: Any, settings: Any) -> Path:
    """Write ``summary.report`` from the parts of an evaluation."""
    root = Path(summary.out)
    r = summary.parts
    sec = summary.seconds
    s = settings
    fig = summary.figures
    lines = [
        "# LesionDiffusion evaluation",
        "",
        f"System: {_system_label(r['system']['folder'])}, preset `{r.get('preset', '?')}` "
        f"(trained with text: {r['system']['text']}). "
        f"Total time: {_minutes(sum(sec.values()))} "
        f"({', '.join(f'{k} {_minutes(v)}' for k, v in sec.items())}).",
        "",
        _data_line(r, s),
        "",
    ]
    if "alignment" in r:
        lines += ["## 1. Text alignment (Fig. 4)", "", r["alignment_md"], ""]
        for name in ("fig4a_shape", "fig4b_density", "fig4c_variation"):
            if name in fig:
                lines += [_img(root, fig[name], name), ""]
    if "quality" in r:
        lines += ["## 2. Image quality", "", r["quality_md"], ""]
        if "quality_gallery" in fig:
            lines += [_img(root, fig["quality_gallery"], "lesion crops"), ""]
    if "downstream" in r:
        lines += [
            "## 3. Downstream segmentation (Tab. 1)",
            "",
            f"Segmenter: {s.segmenter}, "
            + (f"{s.seg_minutes} min" if s.seg_max_steps is None else f"{s.seg_max_steps} steps")
            + f" per model, {s.crops_per_lesion} offset crops per lesion.",
            "",
            r["downstream_md"],
            "",
        ]
        if "downstream" in fig:
            lines += [_img(root, fig["downstream"], "downstream Dice"), ""]
    if "ablation" in r:
        lines += [
            "## 4. Ablation without text (Tab. 2)",
            "",
            "Both systems are trained here the same way (same rule-based set, templates, seed and "
            f"budget, here {_budget(r['ablation'])}), one with the reports, one with the null "
            "context only. Text control on "
            f"{s.n_control} held-out boxes with the same noise across prompts; realised attributes "
            f"of {s.n_generated} lesions per type against the rule table; Dice of a segmenter "
            "trained on each system's lesions, on the held-out rule-based cases.",
            "",
            *_ablation_md(r["ablation"], list(s.types)),
            "",
        ]
    if "generalisation" in r:
        g = r["generalisation"]
        lines += [
            f"## 5. Generalisation to an unseen lesion type: {g['lesion_type']} (Fig. 3)",
            "",
            f"The held-out system never saw a report of {g['lesion_type']} (its cases were removed "
            "from the rule-based training set); it synthesises the type from the report alone. "
            "The system that saw the type gets the same reports, boxes and noise. The rule-based "
            "synthesizer draws its own reports from the type's table and writes the realised size "
            "into them, so its size error is zero by construction (shown as n/a).",
            "",
            *_general_md(g),
            "",
        ]
    summary.report.write_text("\n".join(lines) + "\n")
    return summary.report
