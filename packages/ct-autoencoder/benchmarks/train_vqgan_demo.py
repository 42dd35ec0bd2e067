"""Train a demo-preset VQ-GAN for a few minutes on the abdomen CT and evaluate held-out crops.

The CT is the TotalSegmentator 2.18.0 example (``tests/reference_files/example_ct.nii.gz`` in its
source distribution; 122 x 101 x 112 voxels at 3 mm). Training crops come from slices z < 64,
held-out crops from z >= 72 (spatially disjoint, 8-slice gap). Metrics on held-out crops: PSNR
(HU window range) and SSIM from MONAI's ``SSIMMetric`` (3D, independent implementation), plus a
non-learned baseline (2x average pooling + trilinear upsampling, the same spatial compression).
The held-out slab is also tiled-decoded to report tiled-vs-whole agreement and the seam ratio.

Run (nibabel is needed only here)::

    uv run --package ct-autoencoder --with nibabel python \
        packages/ct-autoencoder/benchmarks/train_vqgan_demo.py --ct PATH/example_ct.nii.gz --minutes 7
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import ct_autoencoder as ca
import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics import PSNRMetric, SSIMMetric

log = logging.getLogger("train_vqgan_demo")


def load_ct(path: str) -> np.ndarray:
    import nibabel as nib

    img = nib.as_closest_canonical(nib.load(path))
    return np.asarray(img.dataobj, dtype=np.float32)


def random_crop(vol: torch.Tensor, size: int, zmax: int, g: torch.Generator) -> torch.Tensor:
    x0 = int(torch.randint(0, vol.shape[0] - size + 1, (1,), generator=g))
    y0 = int(torch.randint(0, vol.shape[1] - size + 1, (1,), generator=g))
    z0 = int(torch.randint(0, zmax - size + 1, (1,), generator=g))
    return vol[x0 : x0 + size, y0 : y0 + size, z0 : z0 + size]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ct", required=True, help="path to example_ct.nii.gz")
    p.add_argument("--minutes", type=float, default=7.0)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="vqgan_demo_run")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    cfg = ca.get_preset("vqgan-demo")
    model = ca.VQGAN(config=cfg)
    disc = ca.Discriminators(config=cfg)
    opts = ca.make_optimizers(model, disc)
    hu = torch.from_numpy(load_ct(args.ct))
    vol = model.normalize(hu)  # (X, Y, Z) in [-1, 1]
    c = cfg.crop_size
    train_zmax, test_z0 = 64, 72

    history = []
    t0 = time.perf_counter()
    step = 0
    model.train()
    while time.perf_counter() - t0 < args.minutes * 60:
        x = torch.stack([random_crop(vol, c, train_zmax, g) for _ in range(args.batch)])[:, None]
        logs = ca.training_step(model, disc, x, opts, step=step, generator=g)
        if step % 25 == 0:
            logs["step"] = step
            logs["seconds"] = round(time.perf_counter() - t0, 1)
            history.append(logs)
            log.info(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in logs.items()}))
        step += 1
    train_seconds = time.perf_counter() - t0

    # ---------------------------------------------------------------- held-out evaluation
    model.eval()
    starts = [(x0, y0, z0) for x0 in (10, 45, 80) for y0 in (15, 50) for z0 in (test_z0, 80)]
    crops = torch.stack([vol[a : a + c, b : b + c, d : d + c] for a, b, d in starts])[:, None]
    with torch.no_grad():
        rec = model.decode_stage_2_outputs(model.encode_stage_2_inputs(crops)).clamp(-1, 1)
        base = F.interpolate(F.avg_pool3d(crops, 2), scale_factor=2, mode="trilinear", align_corners=False)
    psnr = PSNRMetric(max_val=2.0, reduction="none")
    ssim = SSIMMetric(spatial_dims=3, data_range=2.0, reduction="none")  # 11^3 Gaussian window, sigma 1.5
    res = {
        "steps": step,
        "train_seconds": round(train_seconds, 1),
        "held_out_crops": len(starts),
        "psnr_db": float(psnr(rec, crops).mean()),
        "ssim": float(ssim(rec, crops).mean()),
        "baseline_pool_upsample_psnr_db": float(psnr(base, crops).mean()),
        "baseline_pool_upsample_ssim": float(ssim(base, crops).mean()),
        "mae_hu": float((model.denormalize(rec) - model.denormalize(crops)).abs().mean()),
    }
    # held-out slab: whole vs tiled decoding (both fit on CPU)
    slab = vol[:120, :100, test_z0 : test_z0 + 40][None, None]
    with torch.no_grad():
        z = model.encode_stage_2_inputs(slab)
        whole = model.decode(z)
        tiled = ca.tiled_decode(model, z, tile=c, overlap=24, margin=12)
    res.update(
        slab_shape=list(slab.shape[2:]),
        tiled_vs_whole_max_abs=float((tiled - whole).abs().max()),
        tiled_vs_whole_max_abs_hu=float((tiled - whole).abs().max() * cfg.window.width / 2),
        seam_ratio_tiled=ca.seam_ratio(tiled, tile=c, overlap=24),
        seam_ratio_whole=ca.seam_ratio(whole, tile=c, overlap=24),
        slab_psnr_db=float(psnr(whole.clamp(-1, 1), slab).mean()),
    )
    stats = model.codebook_stats(model.quantize(model.encode_pre_quant(crops))[1])
    res.update(perplexity=stats.perplexity, used_codes=stats.used, dead_codes=stats.dead)
    # latent scale over training crops, recorded in the checkpoint for latent diffusion
    fit = [torch.stack([random_crop(vol, c, train_zmax, g) for _ in range(4)])[:, None] for _ in range(4)]
    model.scale_factor = ca.measure_scale_factor(model, fit)
    res.update(scale_factor=model.scale_factor)
    out = Path(args.out)
    ca.save_checkpoint(model, out / "checkpoint")
    (out / "results.json").write_text(json.dumps({"results": res, "history": history}, indent=2))
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
