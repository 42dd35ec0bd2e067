from __future__ import annotations

import itertools

import ct_autoencoder as ca
import pytest
import torch

VQ = ca.VQGANConfig(name="t", channels=(8, 8), strides=(2, 1), num_res_layers=1, num_embeddings=32,
                    embedding_dim=3, crop_size=16)
HDR = ca.HDRAutoencoderConfig(name="t", channels=(4, 8), num_res_blocks=1, norm_groups=1, latent_channels=3,
                              num_embeddings=32, num_label_classes=10, label_embed_dim=2, crop_size=16)


@pytest.mark.parametrize(("size", "tile", "overlap"), [(48, 16, 8), (50, 16, 4), (16, 32, 8), (33, 16, 15)])
def test_tile_starts_cover_with_overlap(size, tile, overlap):
    starts = ca.tile_starts(size, tile, overlap)
    covered = torch.zeros(size, dtype=torch.bool)
    for s in starts:
        covered[s : s + tile] = True
    assert covered.all() and starts[0] == 0
    if tile < size:
        assert starts[-1] + tile == size
        assert all(b - a <= tile - overlap for a, b in itertools.pairwise(starts))


def test_tiled_decode_equals_whole_decode_vqgan(gen):
    # This decoder's receptive radius is 13-16 image voxels (measured: margin 12 leaves ~1e-3
    # relative error, margin 16 ~1e-7). With margin >= radius tiled == whole up to fp32 rounding.
    torch.manual_seed(1)
    model = ca.VQGAN(config=VQ).eval()
    z = model.quantize(torch.randn(1, 3, 48, 12, 16, generator=gen))[0]
    with torch.no_grad():
        whole = model.decode(z)
        tiled = ca.tiled_decode(model, z, tile=48, overlap=40, margin=16)
        close = ca.tiled_decode(model, z, tile=32, overlap=24, margin=12)
        rough = ca.tiled_decode(model, z, tile=16, overlap=8, margin=0)
    peak = float(whole.abs().max())
    assert tiled.shape == whole.shape == (1, 1, 96, 24, 32)
    assert float((tiled - whole).abs().max()) < 1e-5 * peak
    # a halo below the receptive radius: close but not exact; no halo: clearly different
    assert 1e-6 * peak < float((close - whole).abs().max()) < 1e-2 * peak
    assert float((rough - whole).abs().max()) > float((close - whole).abs().max())


def test_tiled_encode_and_decode_hdr_with_labels(gen):
    # margin 20 covers the receptive radius of this encoder and decoder
    model = ca.HDRAutoencoder(config=HDR).eval()
    x = torch.rand(1, 1, 64, 16, 16, generator=gen) * 2 - 1
    lab = torch.randint(0, 10, (1, 1, 64, 16, 16), generator=gen)
    with torch.no_grad():
        h_whole = model.encode_pre_quant(x, lab)
        h_tiled = ca.tiled_encode(model, x, lab, tile=48, overlap=40, margin=20, quantize=False)
        torch.testing.assert_close(h_tiled, h_whole, atol=1e-4, rtol=1e-4)
        z = model.quantize(h_whole)[0]
        whole = model.decode(z, lab)
        tiled = ca.tiled_decode(model, z, lab, tile=48, overlap=40, margin=20)
    torch.testing.assert_close(tiled, whole, atol=1e-4, rtol=1e-4)


def test_seam_ratio_detects_seams_and_tiling_adds_none(gen):
    model = ca.VQGAN(config=VQ).eval()
    z = model.quantize(torch.randn(1, 3, 32, 16, 16, generator=gen))[0]
    with torch.no_grad():
        whole = model.decode(z)
        tiled = ca.tiled_decode(model, z, tile=16, overlap=8, margin=2)
    r_whole = ca.seam_ratio(whole, tile=16, overlap=8)
    r_tiled = ca.seam_ratio(tiled, tile=16, overlap=8)
    assert abs(r_tiled - r_whole) < 0.1 * r_whole
    # naive tiling (abutting tiles, no overlap, each decoded alone) on a smooth field has seams
    smooth = torch.nn.functional.avg_pool3d(torch.randn(1, 1, 68, 36, 36, generator=gen), 5, stride=1)
    seamy = smooth.clone()
    for s in range(0, 64, 16):
        seamy[:, :, s : s + 16] += 0.2 * float(torch.randn(1, generator=gen))
    assert ca.seam_ratio(seamy, tile=16, overlap=0) > 3 * ca.seam_ratio(smooth, tile=16, overlap=0)


def test_tiling_argument_errors():
    model = ca.VQGAN(config=VQ).eval()
    z = torch.zeros(1, 3, 16, 16, 16)
    with pytest.raises(ca.ConfigError, match="multiple of the downsampling factor 2"):
        ca.tiled_decode(model, z, tile=15, overlap=4)
    with pytest.raises(ca.ConfigError, match="overlap must be"):
        ca.tiled_decode(model, z, tile=16, overlap=16)
    with pytest.raises(ca.ConfigError, match="margin"):
        ca.tiled_decode(model, z, tile=16, overlap=8, margin=6)


@pytest.mark.parametrize("kind", ["vqgan", "hdr"])
def test_tiled_decode_agrees_with_decode_stage_2_outputs_on_quantisation(kind, gen):
    # Both snap to the codebook by default and both skip it with quantize=False, so for codebook
    # latents and for arbitrary (e.g. diffusion-output) latents the two decode alike.
    torch.manual_seed(1)
    model = (ca.VQGAN(config=VQ) if kind == "vqgan" else ca.HDRAutoencoder(config=HDR)).eval()
    f = model.downsample_factor
    raw = torch.randn(1, 3, 96 // f, 24 // f, 32 // f, generator=gen)
    codes = model.quantize(raw)[0]
    with torch.no_grad():
        for z in (codes, raw):
            for q in (True, False):
                whole = model.decode_stage_2_outputs(z, quantize=q)
                tiled = ca.tiled_decode(model, z, tile=48, overlap=40, margin=16, quantize=q)
                peak = float(whole.abs().max())
                assert float((tiled - whole).abs().max()) < 1e-5 * peak, (q, kind)
        # the flag matters for off-codebook latents, and not for codebook ones
        d_raw = model.decode_stage_2_outputs(raw) - model.decode_stage_2_outputs(raw, quantize=False)
        assert float(d_raw.abs().max()) > 1e-3
        torch.testing.assert_close(ca.tiled_decode(model, codes, tile=48, overlap=40, margin=16),
                                   ca.tiled_decode(model, codes, tile=48, overlap=40, margin=16, quantize=False))
