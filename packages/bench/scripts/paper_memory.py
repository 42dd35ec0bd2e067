"""Peak memory of GuideGen's inference at the ``paper`` preset's sizes, one stage per process.

    python paper_memory.py [--device cpu|cuda] [--stages tcss,generator,decoder]

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
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time

GIB = 1024**3


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        import os

        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _stage(stage: str, device: str, preset: str, queue: mp.Queue) -> None:
    import torch
    from cat_diffusion import SemanticSynthesizer
    from ctsynth_bench.guidegen.presets import get_preset
    from ctsynth_bench.guidegen.stages import GuidedTCSS, make_autoencoder, make_generator

    torch.set_grad_enabled(False)
    p = get_preset(preset)
    dev = torch.device(device)
    s = p.tcss.spatial_size[0]
    tokens = torch.randn(1, 45, p.tcss.context_dim, device=dev)
    mask = torch.ones(1, 45, dtype=torch.bool, device=dev)
    labels = torch.randint(0, p.tcss.num_classes, (1, 1, s, s, s), device=dev)
    if stage == "tcss":
        net = SemanticSynthesizer(config=p.tcss).to(dev).eval()
        levels = net.encode_context(tokens, mask)
        null = net.encode_context(torch.zeros_like(tokens[:, :1]), mask[:, :1])
        model = GuidedTCSS(net, levels, null, p.guidance)
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--stages", default="tcss,generator,decoder")
    ap.add_argument("--preset", default="paper", help="paper (default) or demo (a quick check)")
    a = ap.parse_args(argv)
    ctx = mp.get_context("spawn")
    rows = []
    for stage in a.stages.split(","):
        q = ctx.Queue()
        proc = ctx.Process(target=_stage, args=(stage, a.device, a.preset, q))
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            print(f"{stage}: failed (exit {proc.exitcode})", file=sys.stderr)
            return 1
        r = q.get()
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
