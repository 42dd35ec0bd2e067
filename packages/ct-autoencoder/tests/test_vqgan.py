from __future__ import annotations

import itertools
import math

import ct_autoencoder as ca
import numpy as np
import pytest
import torch
import torch.nn.functional as F

TINY_VQ = ca.VQGANConfig(
    name="tiny", channels=(8, 16), strides=(2, 1), num_res_layers=1, num_embeddings=64, embedding_dim=4,
    crop_size=16, disc_channels=8, disc_layers=2, adversarial_start=10_000, dead_code_interval=20,
    ema_decay=0.99, learning_rate=3e-3, window=ca.HUWindow(lower=-250.0, upper=250.0),
)


def _crops(abdomen, n: int, size: int, g: torch.Generator, window: ca.HUWindow) -> torch.Tensor:
    ct = torch.from_numpy(abdomen["ct"].astype(np.float32))
    out = []
    for _ in range(n):
        a, b, c = (int(torch.randint(0, s - size + 1, (1,), generator=g)) for s in ct.shape)
        out.append(ct[a : a + size, b : b + size, c : c + size])
    return window.normalize(torch.stack(out)[:, None])


def test_reconstruction_error_falls_steadily_on_real_ct(abdomen, gen):
    torch.manual_seed(0)
    model = ca.VQGAN(config=TINY_VQ)
    disc = ca.Discriminators(config=TINY_VQ)
    opts = ca.make_optimizers(model, disc)
    fixed = _crops(abdomen, 4, 16, torch.Generator().manual_seed(1), TINY_VQ.window)
    evals = []
    for step in range(150):
        x = _crops(abdomen, 2, 16, gen, TINY_VQ.window)
        ca.training_step(model, disc, x, opts, step=step, generator=gen)
        if step % 30 == 0 or step == 149:
            model.eval()
            with torch.no_grad():
                rec = model.decode_stage_2_outputs(model.encode_stage_2_inputs(fixed))
            evals.append(float(F.mse_loss(rec, fixed)))
            model.train()
    # steady fall on held-fixed crops: every checkpoint below the first, and the last well below
    assert all(e < evals[0] for e in evals[1:]), evals
    assert evals[-1] < 0.6 * evals[0], evals
    assert sum(b < a for a, b in itertools.pairwise(evals)) >= len(evals) - 2, evals


def test_codebook_stats_match_analytic_perplexity_and_dead_codes():
    model = ca.VQGAN(config=TINY_VQ)
    idx = torch.tensor([0, 1, 2, 3] * 8)
    stats = model.codebook_stats(idx)
    assert math.isclose(stats.perplexity, 4.0, rel_tol=1e-9)
    assert stats.used == 4
    # fresh EMA state: every cluster size is 0 -> all codes dead
    assert stats.dead == TINY_VQ.num_embeddings
    skew = torch.tensor([0] * 3 + [1])
    p = np.array([0.75, 0.25])
    assert math.isclose(model.codebook_stats(skew).perplexity, float(np.exp(-(p * np.log(p)).sum())), rel_tol=1e-9)


def test_dead_codes_are_reinitialised_from_encoder_outputs(gen):
    model = ca.VQGAN(config=TINY_VQ)
    q = model.quantizer
    q.ema_cluster_size.fill_(5.0)
    q.ema_cluster_size[[3, 7]] = 0.0
    enc = torch.randn(1, 4, 4, 4, 4, generator=gen)
    n = ca.reinit_dead_codes(q, enc, dead_threshold=0.01, generator=gen)
    assert n == 2
    flat = enc.movedim(1, -1).reshape(-1, 4)
    for code in (3, 7):
        row = q.embedding.weight[code]
        assert torch.isclose(flat, row).all(1).any(), "revived code is not an encoder output"
        torch.testing.assert_close(q.ema_w[code], row)
    assert model.codebook_stats(torch.zeros(1, dtype=torch.long)).dead == 0


def test_adversarial_terms_follow_the_schedule(gen):
    cfg = ca.VQGANConfig(**{**TINY_VQ.__dict__, "adversarial_start": 3})
    model, disc = ca.VQGAN(config=cfg), ca.Discriminators(config=cfg)
    x = torch.rand(2, 1, 16, 16, 16, generator=gen) * 2 - 1
    _, logs, out = ca.generator_loss(model, disc, x, step=2)
    assert "adv" not in logs
    assert ca.discriminator_loss(disc, x, out.reconstruction, step=2)[0] is None
    # before adversarial_start the discriminator may be omitted; after it, it is required
    assert "adv" not in ca.generator_loss(model, None, x, step=2)[1]
    with pytest.raises(ca.ConfigError, match="pass discriminator"):
        ca.generator_loss(model, None, x, step=3)
    _, logs, out = ca.generator_loss(model, disc, x, step=3)
    assert logs["adv"] > 0
    d, _ = ca.discriminator_loss(disc, x, out.reconstruction, step=3)
    d.backward()
    assert all(p.grad is not None for p in disc.parameters())
    with pytest.raises(ca.ConfigError, match="built for a HDRAutoencoderConfig"):
        ca.generator_loss(model, ca.Discriminators(config=ca.get_preset("hdr-demo")), x, step=3)


def test_perceptual_loss_25d_is_zero_for_equal_inputs_and_positive_otherwise(gen):
    conv = torch.nn.Conv2d(1, 4, 3, padding=1)

    def feats(img: torch.Tensor) -> list[torch.Tensor]:
        return [conv(img), F.avg_pool2d(torch.relu(conv(img)), 2)]

    assert isinstance(feats, ca.SliceFeatureExtractor)
    x = torch.rand(2, 1, 8, 8, 8, generator=gen)
    assert float(ca.perceptual_loss_25d(x, x.clone(), feats, generator=gen)) == pytest.approx(0.0, abs=1e-7)
    assert float(ca.perceptual_loss_25d(x, torch.rand(2, 1, 8, 8, 8, generator=gen), feats, generator=gen)) > 0.01
    # used by the generator loss when a weight and an extractor are given
    cfg = ca.VQGANConfig(**{**TINY_VQ.__dict__, "perceptual_weight": 1.0})
    _, logs, _ = ca.generator_loss(ca.VQGAN(config=cfg), None, x * 2 - 1, step=0, features=feats, generator=gen)
    assert logs["perc"] > 0


def test_vqgan_rejects_bad_inputs():
    model = ca.VQGAN(config=TINY_VQ)
    with pytest.raises(ca.InputShapeError, match="divisible"):
        model.encode_stage_2_inputs(torch.zeros(1, 1, 15, 16, 16))
    with pytest.raises(ca.InputShapeError, match=r"\(B, 1, X, Y, Z\)"):
        model.encode_stage_2_inputs(torch.zeros(1, 16, 16, 16))
    with pytest.raises(ca.InputShapeError, match="floating point"):
        model.encode_stage_2_inputs(torch.zeros(1, 1, 16, 16, 16, dtype=torch.int16))
    with pytest.raises(ca.InputShapeError, match="no label map"):
        model.encode_stage_2_inputs(torch.zeros(1, 1, 16, 16, 16), torch.zeros(1, 1, 16, 16, 16))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs_fail_at_once_naming_the_input(bad):
    vq = ca.VQGAN(config=TINY_VQ).eval()
    hdr = ca.HDRAutoencoder(config=ca.get_preset("hdr-demo", crop_size=16)).eval()
    x = torch.zeros(1, 1, 16, 16, 16)
    x[0, 0, 3, 4, 5] = bad
    allnan = torch.full((1, 1, 16, 16, 16), float("nan"))
    for model in (vq, hdr):
        for inp in (x, allnan):
            with pytest.raises(ca.NonFiniteInputError, match=r"^x holds \d+ non-finite"):
                model.encode_stage_2_inputs(inp)
        with pytest.raises(ca.NonFiniteInputError, match="x holds"):
            ca.tiled_encode(model, allnan, tile=16, overlap=0)
        z = torch.zeros(1, 4, 8, 8, 8) if model is vq else torch.zeros(1, 4, 4, 4, 4)
        z[0, 0, 0, 0, 0] = bad
        with pytest.raises(ca.NonFiniteInputError, match=r"^z holds 1 non-finite"):
            model.decode_stage_2_outputs(z)
        with pytest.raises(ca.NonFiniteInputError, match=r"^z holds"):
            ca.tiled_decode(model, z, tile=16, overlap=0)
    hu = torch.full((2, 2), 40.0)
    hu[1, 1] = bad
    with pytest.raises(ca.NonFiniteInputError, match=r"^hu holds 1 non-finite"):
        TINY_VQ.window.normalize(hu)
    with pytest.raises(ca.NonFiniteInputError, match=r"^hu holds 1 non-finite"):
        TINY_VQ.window.normalize(hu.numpy())
