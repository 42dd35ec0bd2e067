"""Sampler overhead benchmark: time per sampler step versus one bare UNet forward at the same shape.

The sampler's work beyond the network (condition concatenation, guidance arithmetic, the DDIM
update, the known-latent blend) should cost at most 5 % of a step. The bare forward is measured
at exactly the batch the sampler feeds the network (2B with classifier-free guidance, B without).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Literal

import torch

from . import LatentGenerator, LINet, LMNet, get_preset
from .exceptions import ConfigError

__all__ = ["SamplerBenchmark", "benchmark_sampler"]


@dataclass(frozen=True)
class SamplerBenchmark:
    """Result of :func:`benchmark_sampler` (seconds).

    Attributes:
        model: which network was timed.
        shape: sample shape (B, C, X, Y, Z).
        steps: sampler steps per run.
        guidance_scale: CFG scale (network batch is 2B when != 1).
        step_s: median sampler time per step.
        forward_s: median bare UNet forward time at the same input shape.
        ratio: ``step_s / forward_s`` (1.05 = 5 % overhead); noisy on a loaded machine.
        overhead_s: median time per step of the same loop with a zero-cost stand-in network, i.e.
            the sampler's own work (concatenation, guidance, DDIM update, blend).
        overhead_ratio: ``(forward_s + overhead_s) / forward_s``, the load-robust estimate.
    """

    model: str
    shape: tuple[int, ...]
    steps: int
    guidance_scale: float
    step_s: float
    forward_s: float
    ratio: float
    overhead_s: float
    overhead_ratio: float


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def benchmark_sampler(
    *,
    preset: Literal["demo", "paper"] = "demo",
    model: Literal["linet", "lmnet", "latent_generator"] = "linet",
    batch: int = 1,
    steps: int = 10,
    repeats: int = 3,
    guidance_scale: float = 2.5,
    context_tokens: int = 8,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> SamplerBenchmark:
    """Time the sampler against the bare UNet with randomly initialised weights.

    Args:
        preset: size preset.
        model: ``"linet"`` (inpainting sampler), ``"lmnet"`` or ``"latent_generator"``.
        batch: batch size B.
        steps: sampler steps per timed run.
        repeats: timed runs (the median is reported) after one warm-up run.
        guidance_scale: CFG scale (1 = single forward per step).
        context_tokens: context length L.
        device: where to run (the caller chooses; never defaults to CUDA).
        dtype: parameter and sample dtype.
        generator: random source of inputs and sampling noise.
    """
    if steps < 1 or repeats < 1 or batch < 1:
        raise ConfigError(f"steps, repeats and batch must be >= 1, got {steps}, {repeats}, {batch}")
    device = torch.device(device)
    p = get_preset(preset)
    g = generator
    if model == "linet":
        net: torch.nn.Module = LINet(config=p.linet)
        spatial, c, ccond = p.inpaint_latent, p.linet.latent_channels, 1
        dim = p.linet.unet.context_dim
    elif model == "lmnet":
        net = LMNet(config=p.lmnet)
        spatial, c, ccond = p.mask_crop, 1, 3
        dim = p.lmnet.unet.context_dim
    elif model == "latent_generator":
        net = LatentGenerator(config=p.latent_generator)
        spatial, c, ccond = p.generator_latent, p.latent_generator.latent_channels, p.latent_generator.cond_channels
        dim = p.latent_generator.unet.context_dim
    else:
        raise ConfigError(f"model must be 'linet', 'lmnet' or 'latent_generator', got {model!r}")
    net = net.to(device=device, dtype=dtype).eval()
    unet = net.unet
    shape = (batch, c, *spatial)
    x = torch.randn(shape, generator=g).to(device, dtype)
    ctx = torch.randn(batch, context_tokens, dim, generator=g).to(device, dtype)
    mask = torch.zeros(batch, 1, *spatial, device=device, dtype=dtype)
    sl = tuple(slice(s // 4, 3 * s // 4) for s in spatial)
    mask[(slice(None), slice(None), *sl)] = 1
    cond = mask if model == "linet" else torch.rand(batch, ccond, *spatial, generator=g).to(device, dtype)

    sampler = net.sampler(num_inference_steps=steps, guidance_scale=guidance_scale)
    cached = torch.zeros(2 * batch, *shape[1:], device=device, dtype=dtype)

    def stub(inp: torch.Tensor, t: torch.Tensor, context: object = None) -> torch.Tensor:
        return cached[: inp.shape[0]]

    def run_with(network) -> None:
        if model == "linet":
            sampler.sample(network, x, mask, cond=mask, context=ctx, generator=g)
        else:
            sampler.sample(network, x, cond=cond, context=ctx, generator=g)

    def run_sampler() -> None:
        run_with(unet)

    def run_stub() -> None:
        run_with(stub)

    two = guidance_scale != 1.0
    fin = torch.cat([x, cond], 1)
    fctx = ctx
    if two:
        fin, fctx = torch.cat([fin, fin]), torch.cat([ctx, torch.zeros_like(ctx)])
    ts = torch.full((fin.shape[0],), 500, device=device, dtype=torch.long)

    @torch.no_grad()
    def run_forward() -> None:
        for _ in range(steps):
            unet(fin, ts, context=fctx)

    def timed(fn) -> float:
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        return (time.perf_counter() - t0) / steps

    timed(run_sampler), timed(run_forward), timed(run_stub)  # warm-up
    step_times, fwd_times, stub_times = [], [], []
    for _ in range(repeats):  # interleave so load changes hit all alike
        step_times.append(timed(run_sampler))
        fwd_times.append(timed(run_forward))
        stub_times.append(timed(run_stub))
    step_s, fwd_s = statistics.median(step_times), statistics.median(fwd_times)
    over = statistics.median(stub_times)
    return SamplerBenchmark(
        model=model, shape=shape, steps=steps, guidance_scale=guidance_scale,
        step_s=step_s, forward_s=fwd_s, ratio=step_s / fwd_s,
        overhead_s=over, overhead_ratio=(fwd_s + over) / fwd_s,
    )
