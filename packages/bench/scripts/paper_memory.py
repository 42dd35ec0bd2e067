"""Peak memory of GuideGen's inference at the ``paper`` preset's sizes, one stage per process.

    python paper_memory.py [--device cpu|cuda] [--stages tcss,generator,decoder]
    python paper_memory.py --e2e [--device cuda] [--tcss-steps N] [--gen-steps N]

The networks are built with the ``paper`` preset and random weights (memory does not depend on
the values) and each runs the call that inference repeats, at full size:

* ``tcss``: one guided TCSS call on a 128^3 map (prompt and null prompt batched, as sampling does);
* ``generator``: the latent generator's sampling with one DDIM step (guided, 64^3 x 8 latents
  with the 128^3 label map);
* ``decoder``: one 128^3 tile of the HDR decoder (the preset decodes 256^3 in such tiles; the
  blending buffers add 2 x 256^3 float32 = 128 MiB, counted in the total).

A sampling loop keeps no activations from one step to the next, so one call's peak is the
stage's peak. On CUDA the number is ``torch.cuda.max_memory_allocated``; on the CPU it is the
growth of the process's peak resident set during the call (the weights are counted separately).
The paper reports 8.9 GB for its whole inference on a GPU.

``--e2e`` runs the whole inference instead, as ``bench synth guidegen`` does it, in one process
with every network resident: a fast TCSS sampling of a 128^3 map, the latent generator's DDIM
sampling and the tiled HDR decode of the 256^3 CT (``pipeline.sample_label_maps`` and
``pipeline.labels_to_ct``). It prints each stage's time and peak and the whole run's peak (on CUDA
``max_memory_allocated`` and ``max_memory_reserved``, the latter being what ``nvidia-smi`` shows
less the CUDA context). The steps default to the preset's (100 fast TCSS steps, 200 DDIM steps).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
from typing import Any

GIB = 1024**3


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        import os

        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _preset(name: str, chunk: int | None):
    from ctsynth_bench.guidegen.presets import get_preset

    return get_preset(name) if chunk is None else get_preset(name, tcss_chunk=chunk)


def _stage(stage: str, device: str, preset: str, chunk: int | None, queue: mp.Queue) -> None:
    import torch
    from cat_diffusion import SemanticSynthesizer
    from ctsynth_bench.guidegen.stages import GuidedTCSS, make_autoencoder, make_generator

    torch.set_grad_enabled(False)
    p = _preset(preset, chunk)
    dev = torch.device(device)
    s = p.tcss.spatial_size[0]
    tokens = torch.randn(1, 45, p.tcss.context_dim, device=dev)
    mask = torch.ones(1, 45, dtype=torch.bool, device=dev)
    labels = torch.randint(0, p.tcss.num_classes, (1, 1, s, s, s), device=dev)
    if stage == "tcss":
        net = SemanticSynthesizer(config=p.tcss).to(dev).eval()
        levels = net.encode_context(tokens, mask)
        null = net.encode_context(torch.zeros_like(tokens[:, :1]), mask[:, :1])
        model = GuidedTCSS(net, levels, null, p.guidance, chunk=p.tcss_chunk)
        x = torch.nn.functional.one_hot(labels[:, 0], p.tcss.num_classes).movedim(-1, 1).float()

        def call() -> None:
            model(x, torch.tensor([500], device=dev))

    elif stage == "generator":
        net = make_generator(p).to(dev).eval()

        def call() -> None:
            net.sample(
                labels,
                latent_size=(p.latent_size,) * 3,
                context=tokens,
                num_inference_steps=1,
                guidance_scale=p.gen_guidance,
            )

    elif stage == "decoder":
        net = make_autoencoder(p).to(dev).eval()
        f = p.ct_size // p.latent_size
        edge = p.decode_tile or p.ct_size
        z = torch.randn(1, p.latent_channels, *(edge // f,) * 3, device=dev)
        lab = torch.randint(0, p.tcss.num_classes, (1, 1, edge, edge, edge), device=dev)

        def call() -> None:
            net.decode_stage_2_outputs(z, lab)

    else:
        raise SystemExit(f"unknown stage {stage!r}")
    weights = sum(t.numel() * t.element_size() for t in net.parameters())
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    else:
        base = _rss()
    t0 = time.time()
    call()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated(dev) - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    queue.put(
        {
            "stage": stage,
            "weights_bytes": weights,
            "call_peak_bytes": int(peak),
            "seconds": time.time() - t0,
        }
    )


def _e2e(
    device: str, preset: str, chunk: int | None, tcss_steps: int, gen_steps: int, queue: mp.Queue
) -> None:
    from pathlib import Path

    import torch
    from cat_diffusion import SemanticSynthesizer
    from ctsynth_bench.guidegen.pipeline import labels_to_ct
    from ctsynth_bench.guidegen.presets import tumour_class_weights
    from ctsynth_bench.guidegen.stages import make_autoencoder, make_generator, sample_label_maps
    from ctsynth_bench.guidegen.system import GuideGenSystem

    torch.set_grad_enabled(False)
    torch.manual_seed(0)
    p = _preset(preset, chunk)
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    system = GuideGenSystem(
        preset=p,
        tcss=SemanticSynthesizer(config=p.tcss).eval(),
        autoencoder=make_autoencoder(p).eval(),
        generator=make_generator(p).eval(),
        text_encoder="random tokens",
        path=Path("."),
        info={},
    ).to(dev)
    weights = sum(
        t.numel() * t.element_size()
        for m in (system.tcss, system.autoencoder, system.generator)
        for t in m.parameters()
    )
    tokens = torch.randn(1, 45, p.tcss.context_dim)
    mask = torch.ones(1, 45, dtype=torch.bool)

    def mark() -> tuple[float, int]:
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(dev)
            return time.time(), torch.cuda.memory_allocated(dev)
        return time.time(), _rss()

    def peak() -> int:
        if cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated(dev)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    rows: list[dict] = []

    def log(stage: str, t0: float, base: int, **extra: object) -> None:
        r = {"stage": stage, "seconds": time.time() - t0, "peak_bytes": peak(), "base_bytes": base}
        r.update(extra)
        rows.append(r)
        print(
            f"{stage}: {r['seconds']:.1f} s, peak {r['peak_bytes'] / GIB:.2f} GiB "
            f"(resident before it {base / GIB:.2f} GiB)",
            flush=True,
        )

    t_all, _ = mark()
    t0, base = mark()
    labels, calls = sample_label_maps(
        system.tcss,
        tokens,
        mask,
        guidance=p.guidance,
        sampler="fast",
        steps=tcss_steps,
        class_weights=tumour_class_weights(p.tumour_weight) if p.calibrate else None,
        chunk=p.tcss_chunk,
    )
    log("tcss", t0, base, calls=calls)
    sample = system.generator.sample

    def timed_sample(*args: object, **kw: object) -> torch.Tensor:
        t0, base = mark()
        out = sample(*args, **kw)
        log("generator", t0, base, steps=kw.get("num_inference_steps"))
        return out

    system.generator.sample = timed_sample  # type: ignore[method-assign]
    t0, base = mark()
    ct = labels_to_ct(system, labels, tokens, steps=gen_steps)
    log("generator+decode", t0, base, ct_shape=list(ct.shape))
    whole = {
        "seconds": time.time() - t_all,
        "weights_bytes": weights,
        "peak_bytes": max(r["peak_bytes"] for r in rows),
    }
    if cuda:
        whole["reserved_peak_bytes"] = torch.cuda.max_memory_reserved(dev)
        whole["gpu"] = torch.cuda.get_device_name(dev)
    queue.put(
        {
            "device": device,
            "preset": preset,
            "tcss_chunk": p.tcss_chunk,
            "stages": rows,
            "whole": whole,
        }
    )


def _in_child(ctx: Any, name: str, target: Any, *args: Any) -> dict | None:
    """Run ``target(*args, queue)`` in a fresh process (its own peak memory); its result or None."""
    q = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, q))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        print(f"{name}: failed (exit {proc.exitcode})", file=sys.stderr)
        return None
    return q.get()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--stages", default="tcss,generator,decoder")
    ap.add_argument("--preset", default="paper", help="paper (default) or demo (a quick check)")
    ap.add_argument(
        "--tcss-chunk", type=int, default=None, help="samples per TCSS call (default: the preset's)"
    )
    ap.add_argument("--e2e", action="store_true", help="the whole inference in one process")
    ap.add_argument("--tcss-steps", type=int, default=None, help="fast TCSS steps (--e2e)")
    ap.add_argument("--gen-steps", type=int, default=None, help="generator DDIM steps (--e2e)")
    a = ap.parse_args(argv)
    ctx = mp.get_context("spawn")
    if a.e2e:
        from ctsynth_bench.guidegen.presets import get_preset

        p = get_preset(a.preset)
        steps = (a.tcss_steps or p.tcss.fast_steps, a.gen_steps or p.gen_steps)
        r = _in_child(ctx, "e2e", _e2e, a.device, a.preset, a.tcss_chunk, *steps)
        if r is None:
            return 1
        print(json.dumps(r))
        w = r["whole"]
        print(
            f"whole inference ({steps[0]} TCSS steps, tcss_chunk {r['tcss_chunk']}, "
            f"{steps[1]} DDIM steps): {w['seconds']:.0f} s, "
            f"peak {w['peak_bytes'] / GIB:.2f} GiB with every network resident "
            f"(weights {w['weights_bytes'] / GIB:.2f} GiB; paper: 8.9 GB on a GPU)"
        )
        if "reserved_peak_bytes" in w:
            print(
                f"allocator's reserved peak: {w['reserved_peak_bytes'] / GIB:.2f} GiB on {w['gpu']}"
            )
        return 0
    rows = []
    for stage in a.stages.split(","):
        r = _in_child(ctx, stage, _stage, stage, a.device, a.preset, a.tcss_chunk)
        if r is None:
            return 1
        rows.append(r)
        print(
            f"{stage}: weights {r['weights_bytes'] / GIB:.2f} GiB, one call's peak "
            f"{r['call_peak_bytes'] / GIB:.2f} GiB, {r['seconds']:.0f} s",
            flush=True,
        )
    total = sum(r["weights_bytes"] for r in rows) + max(r["call_peak_bytes"] for r in rows)
    if any(r["stage"] == "decoder" for r in rows):
        from ctsynth_bench.guidegen.presets import get_preset

        total += 2 * get_preset(a.preset).ct_size ** 3 * 4
    print(
        json.dumps(
            {
                "device": a.device,
                "preset": a.preset,
                "stages": rows,
                "all_weights_plus_largest_call_bytes": total,
            }
        )
    )
    print(
        f"all weights resident + the largest call: {total / GIB:.2f} GiB (paper: 8.9 GB on a GPU)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
