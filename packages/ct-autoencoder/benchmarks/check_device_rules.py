"""Check the randomness and device rules of ct_autoencoder on an accelerator.

Run on a machine with a GPU (needs only torch, MONAI, numpy, safetensors, tqdm):

    python packages/ct-autoencoder/benchmarks/check_device_rules.py

Checks, on CUDA tensors: a CUDA generator draws on the GPU; a CPU generator draws on the CPU and
gives the same numbers as the same seed on a CPU run; without a generator the draws happen on
the tensor's device; a training step of both models, tiled vs whole decoding and the scale
measurement run on the GPU. Prints one JSON object and exits non-zero on a failed check.
"""

from __future__ import annotations

import json
import sys

import ct_autoencoder as ca
import torch

DRAWS: list[str] = []


def _spy() -> None:
    for name in ("rand", "randn", "randint"):
        original = getattr(torch, name)

        def spy(*args, _original=original, **kwargs):
            DRAWS.append(torch.device(kwargs.get("device") or "cpu").type)
            return _original(*args, **kwargs)

        setattr(torch, name, spy)


def _stochastic(x: torch.Tensor, generator: torch.Generator | None) -> list[torch.Tensor]:
    cfg = ca.get_preset("hdr-demo-kl", crop_size=16, adversarial_start=10**6)
    torch.manual_seed(3)
    model = ca.HDRAutoencoder(config=cfg).to(x.device).train()
    labels = torch.zeros(x.shape, dtype=torch.long, device=x.device)
    out = [*model.window.sample(x, generator=generator), model(x, generator=generator).latent]
    out.append(ca.generator_loss(model, None, x, labels=labels, step=0, generator=generator)[0])
    out.append(ca.random_slices(x, 2, generator=generator)[0])
    out.append(ca.perceptual_loss_25d(x, x.flip(2), lambda im: [im], generator=generator))
    return out


def main() -> int:
    if not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device"}))
        return 2
    _spy()
    dev = torch.device("cuda")
    res: dict[str, object] = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    ok = True
    x_cpu = torch.rand(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    x = x_cpu.to(dev)

    DRAWS.clear()
    outs = _stochastic(x, torch.Generator(device=dev).manual_seed(1))
    res["cuda_generator_draw_devices"] = sorted(set(DRAWS))
    ok &= set(DRAWS) == {"cuda"} and all(o.device.type == "cuda" for o in outs)

    DRAWS.clear()
    on_gpu = _stochastic(x, torch.Generator().manual_seed(1))
    res["cpu_generator_draw_devices"] = sorted(set(DRAWS))
    ok &= set(DRAWS) == {"cpu"} and all(o.device.type == "cuda" for o in on_gpu)
    # CPU generator: the window draws are identical to a CPU run with the same seed
    w_gpu = ca.HDRWindow(k_init=2.0, k_min=0.5, b_init=-1.0, min_radius=0.05).sample(
        x, generator=torch.Generator().manual_seed(7))
    w_cpu = ca.HDRWindow(k_init=2.0, k_min=0.5, b_init=-1.0, min_radius=0.05).sample(
        x_cpu, generator=torch.Generator().manual_seed(7))
    same = all(torch.allclose(a.cpu(), b, atol=1e-6) for a, b in zip(w_gpu, w_cpu, strict=True))
    res["cpu_generator_same_numbers_on_gpu_and_cpu"] = same
    ok &= same

    DRAWS.clear()
    _stochastic(x, None)
    res["no_generator_draw_devices"] = sorted(set(DRAWS))
    ok &= set(DRAWS) == {"cuda"}

    # training steps on the GPU with a CUDA generator, both models, adversarial terms on
    g = torch.Generator(device=dev).manual_seed(0)
    for name in ("vqgan-demo", "hdr-demo"):
        cfg = ca.get_preset(name, crop_size=16, adversarial_start=0)
        model = ca.build_model(cfg).to(dev)
        disc = ca.Discriminators(config=cfg).to(dev)
        opts = ca.make_optimizers(model, disc)
        logs = [ca.training_step(model, disc, x, opts, step=s, generator=g) for s in range(1, 4)]
        finite = all(torch.isfinite(torch.tensor(v)).item() for lg in logs for v in lg.values())
        res[f"{name}_train_logs_finite"] = finite
        ok &= finite
        model.eval()
        with torch.no_grad():
            model.scale_factor = ca.measure_scale_factor(model, [x])
            f = model.downsample_factor
            z = torch.randn(1, model.latent_channels, 96 // f, 24 // f, 32 // f, device=dev, generator=g)
            whole = model.decode_stage_2_outputs(z)
            tiled = ca.tiled_decode(model, z, tile=64, overlap=56, margin=28)
        rel = float((tiled - whole).abs().max() / whole.abs().max())
        res[f"{name}_tiled_vs_whole_rel"] = rel
        res[f"{name}_scale_factor"] = model.scale_factor
        # the HDR demo decoder's receptive radius exceeds this margin: about 4e-4 measured on an H200
        ok &= rel < 1e-3
    res["ok"] = bool(ok)
    print(json.dumps(res, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
