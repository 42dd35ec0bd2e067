"""Draw the derived thoracic oesophagus (id 15) on the fetched chest CTs: ``docs/esophagus.png``.

Usage: ``uv run python packages/bench/scripts/esophagus_figure.py [OUT.png]`` (after
``bench data fetch``). Each row is one case: four axial slices from top to bottom of the derived
tube (a 70 mm field around it, soft-tissue window) and a sagittal view through it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from ctsynth_bench.data import load_case

CASES = ("chest_cta", "rider", "lung1", "lung2")


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/esophagus.png")
    fig, axes = plt.subplots(len(CASES), 5, figsize=(15, 3.2 * len(CASES)))
    for row, name in zip(axes, CASES):
        case = load_case(name)
        eso = case.organs == 15
        sp = np.asarray(case.spacing)
        ks = np.nonzero(eso.any(axis=(0, 1)))[0]
        for ax, k in zip(row[:4], np.linspace(ks.max(), ks.min(), 4).astype(int)):
            xs, ys = np.nonzero(eso[:, :, k])
            i, j = int(xs.mean()), int(ys.mean())
            hx, hy = int(35 / sp[0]), int(35 / sp[1])
            x0, y0 = max(0, i - hx), max(0, j - hy)
            x1, y1 = i + hx, j + hy
            # RAS arrays: flip x so the patient's right is on the image's left (radiological view).
            img = case.ct[x0:x1, y0:y1, k].T[::-1, ::-1]
            msk = eso[x0:x1, y0:y1, k].T[::-1, ::-1]
            ax.imshow(img, cmap="gray", vmin=-200, vmax=250, aspect=sp[1] / sp[0])
            ax.contour(msk, [0.5], colors="r", linewidths=1.0)
            ax.set_title(f"{name} axial z={k}", fontsize=9)
            ax.axis("off")
        xc = int(np.median(np.nonzero(eso)[0]))
        sag = case.ct[xc].T[::-1]
        row[4].imshow(sag, cmap="gray", vmin=-200, vmax=250, aspect=sp[2] / sp[1])
        row[4].contour(eso[xc].T[::-1], [0.5], colors="r", linewidths=1.0)
        row[4].set_title(f"{name} sagittal (anterior right)", fontsize=9)
        row[4].axis("off")
    fig.suptitle("Derived thoracic oesophagus (red): axial slices anterior up, patient's right on the left")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=60)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
