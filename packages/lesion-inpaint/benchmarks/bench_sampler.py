"""Per-step sampler time versus one bare UNet forward at the same shape (target: ratio <= 1.05).

Usage:
    uv run --package lesion-inpaint python packages/lesion-inpaint/benchmarks/bench_sampler.py \
        --preset demo --model linet --steps 10 --repeats 3
"""

from __future__ import annotations

import argparse

import torch
from lesion_inpaint.benchmark import benchmark_sampler


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=["demo", "paper"], default="demo")
    ap.add_argument("--model", choices=["linet", "lmnet", "latent_generator", "all"], default="all")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.5])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    models = ["linet", "lmnet", "latent_generator"] if a.model == "all" else [a.model]
    print(
        f"{'model':17} {'shape':24} {'cfg':>4} {'step ms':>9} {'fwd ms':>9} {'ratio':>7} "
        f"{'own ms':>8} {'fwd+own/fwd':>11}"
    )
    worst = worst_direct = 0.0
    for m in models:
        for s in a.guidance:
            r = benchmark_sampler(
                preset=a.preset, model=m, batch=a.batch, steps=a.steps, repeats=a.repeats,
                guidance_scale=s, device=a.device, generator=torch.Generator().manual_seed(0),
            )
            worst = max(worst, r.overhead_ratio)
            worst_direct = max(worst_direct, r.ratio)
            print(
                f"{m:17} {r.shape!s:24} {s:4.1f} {1e3 * r.step_s:9.2f} {1e3 * r.forward_s:9.2f} "
                f"{r.ratio:7.3f} {1e3 * r.overhead_s:8.3f} {r.overhead_ratio:11.4f}"
            )
    print(f"worst direct ratio step/forward: {worst_direct:.3f} (noisy under load)")
    print(
        f"worst (forward + sampler's own time) / forward: {worst:.4f} "
        f"({'within' if worst <= 1.05 else 'OVER'} the 5% overhead target)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
