from __future__ import annotations

import ct_autoencoder as ca
import numpy as np
import pytest
import torch
import torch.nn.functional as F

TINY = ca.HDRAutoencoderConfig(
    name="tiny", channels=(4, 8), num_res_blocks=1, norm_groups=1, latent_channels=3, num_embeddings=32,
    num_label_classes=100, label_embed_dim=3, crop_size=16, disc_channels=4, disc_layers=2, num_frames=1,
    label_dropout=0.0,
)


def _real(abdomen, size=16):
    window = TINY.window
    ct = torch.from_numpy(abdomen["ct"][16 : 16 + size, 16 : 16 + size, 16 : 16 + size].astype(np.float32))
    lab = torch.from_numpy(abdomen["labels"][16 : 16 + size, 16 : 16 + size, 16 : 16 + size].astype(np.int64))
    return window.normalize(ct)[None, None], lab[None, None]


def test_window_h_matches_equation_7():
    w = ca.HDRWindow(k_init=2.0, k_min=0.5, b_init=-1.0, min_radius=0.05)
    x = torch.tensor([-1.0, -0.2, 0.0, 0.1, 0.3, 1.0]).reshape(1, 1, 6, 1, 1)
    wc, wr = torch.tensor(0.05).reshape(1, 1, 1, 1, 1), torch.tensor(0.25).reshape(1, 1, 1, 1, 1)
    # (x - w_c + w_r) / (2 w_r) clipped to [0, 1], times k=2, plus b=-1
    expect = 2.0 * np.clip((np.array([-1.0, -0.2, 0.0, 0.1, 0.3, 1.0]) - 0.05 + 0.25) / 0.5, 0, 1) - 1.0
    np.testing.assert_allclose(w(x, wc, wr).detach().flatten().numpy(), expect, atol=1e-6)
    assert float(w.k.detach()) == pytest.approx(2.0)


def test_window_sampling_stays_in_the_intensity_range(gen):
    w = ca.HDRWindow(k_init=2.0, k_min=0.5, b_init=-1.0, min_radius=0.05)
    x = torch.stack([torch.linspace(-0.5, 0.5, 64), torch.linspace(-1, 0, 64)]).reshape(2, 1, 4, 4, 4)
    for _ in range(50):
        wc, wr = w.sample(x, generator=gen)
        assert (-0.5 <= wc[0]).all() and (wc[0] <= 0.5).all()
        assert (-1 <= wc[1]).all() and (wc[1] <= 0).all()
        assert (wr >= 0.05 - 1e-6).all() and (wr <= 0.5 + 1e-6).all()


def test_gradients_reach_k_and_b(abdomen, gen):
    model = ca.HDRAutoencoder(config=TINY)
    x, lab = _real(abdomen)
    conv = torch.nn.Conv2d(1, 4, 3, padding=1)

    def feats(img):
        return [torch.relu(conv(img))]

    disc = ca.Discriminators(config=TINY)
    loss, _, _ = ca.generator_loss(model, disc, x, labels=lab, step=0, features=feats, generator=gen)
    loss.backward()
    assert model.window.k_raw.grad is not None and float(model.window.k_raw.grad.abs()) > 0
    assert model.window.b.grad is not None and float(model.window.b.grad.abs()) > 0
    # Under the L1 term alone b cancels exactly (h(x_hat) - h(x) has no b), so its gradient is 0
    # and only the perceptual term trains b; k still receives gradient.
    model.zero_grad()
    loss, _, _ = ca.generator_loss(model, disc, x, labels=lab, step=0, generator=torch.Generator().manual_seed(3))
    loss.backward()
    assert float(model.window.b.grad.abs()) == 0.0
    assert float(model.window.k_raw.grad.abs()) > 0


def test_label_pyramid_equals_pooled_one_hot_projection(gen):
    model = ca.HDRAutoencoder(config=TINY)
    lab = torch.randint(0, 100, (1, 1, 8, 8, 8), generator=gen)
    pyr = model.label_pyramid(lab, (1, 1, 8, 8, 8))
    assert [tuple(p.shape) for p in pyr] == [(1, 3, 8, 8, 8), (1, 3, 4, 4, 4)]
    # independent: one-hot -> area resampling -> linear map by the embedding table
    onehot = F.one_hot(lab[:, 0], 101).movedim(-1, 1).double()
    frac = F.avg_pool3d(onehot, 2)
    ref = torch.einsum("bnxyz,ne->bexyz", frac, model.label_embedding.weight.double())
    torch.testing.assert_close(pyr[1].double(), ref, atol=1e-6, rtol=1e-6)


def test_pyramidal_label_conditioning_changes_encoder_and_decoder(abdomen):
    model = ca.HDRAutoencoder(config=TINY).eval()
    x, lab = _real(abdomen)
    with torch.no_grad():
        h_none = model.encode_pre_quant(x)
        h_lab = model.encode_pre_quant(x, lab)
        assert (h_none - h_lab).abs().max() > 1e-3
        z = h_lab[:, :3]
        y_lab, y_none = model.decode(z, lab), model.decode(z)
        assert (y_lab - y_none).abs().max() > 1e-3
        # a single 2^3 "lesion" in the map changes the decoded image there (small structures survive)
        lab2 = lab.clone()
        lab2[..., 6:8, 6:8, 6:8] = 99
        diff = (model.decode(z, lab2) - y_lab).abs()[0, 0]
        assert diff[6:8, 6:8, 6:8].max() > 1e-3
        assert diff[6:8, 6:8, 6:8].max() >= diff.max() * 0.5


def test_kl_variant_encodes_mean_and_samples_in_training(gen):
    cfg = ca.HDRAutoencoderConfig(**{**TINY.__dict__, "bottleneck": "kl"})
    model = ca.HDRAutoencoder(config=cfg)
    x = torch.rand(1, 1, 16, 16, 16, generator=gen) * 2 - 1
    model.eval()
    with torch.no_grad():
        z1, z2 = model.encode_stage_2_inputs(x), model.encode_stage_2_inputs(x)
    torch.testing.assert_close(z1, z2)
    assert z1.shape == (1, 3, 8, 8, 8)
    model.train()
    out = model(x, generator=gen)
    assert not torch.allclose(out.latent, out.encodings)
    assert float(out.regularization.detach()) >= 0


def test_training_step_with_labels_and_discriminators(abdomen, gen):
    cfg = ca.HDRAutoencoderConfig(**{**TINY.__dict__, "adversarial_start": 0, "label_dropout": 0.5})
    model, disc = ca.HDRAutoencoder(config=cfg), ca.Discriminators(config=cfg)
    opts = ca.make_optimizers(model, disc)
    x, lab = _real(abdomen)
    before = [p.detach().clone() for p in disc.parameters()]
    logs = ca.training_step(model, disc, x, opts, step=1, labels=lab, generator=gen)
    for key in ("rec", "adv_frame", "adv_volume", "disc_frame", "disc_volume", "perplexity", "k", "b"):
        assert key in logs
    after = list(disc.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_plain_l1_term_adds_the_unwindowed_error(abdomen):
    """``plain_l1_weight`` adds mean |x_hat - x| (model range) to Eq. 8; 0 keeps the paper's loss."""
    x, lab = _real(abdomen)
    losses = {}
    for w in (0.0, 2.0):
        torch.manual_seed(0)
        cfg = ca.HDRAutoencoderConfig(**{**TINY.__dict__, "plain_l1_weight": w})
        model, disc = ca.HDRAutoencoder(config=cfg), ca.Discriminators(config=cfg)
        loss, logs, out = ca.generator_loss(model, disc, x, step=0, labels=lab, generator=torch.Generator().manual_seed(1))
        losses[w] = (float(loss.detach()), logs, out)
    base, (loss2, logs2, out2) = losses[0.0], losses[2.0]
    assert "plain_l1" not in base[1]
    expected = float(torch.mean(torch.abs(out2.reconstruction - x)))
    assert logs2["plain_l1"] == pytest.approx(expected, rel=1e-6)
    assert loss2 == pytest.approx(base[0] + 2.0 * expected, rel=1e-5)
    with pytest.raises(ca.ConfigError, match="plain_l1_weight"):
        ca.HDRAutoencoderConfig(**{**TINY.__dict__, "plain_l1_weight": -1.0})


def test_bad_label_maps_are_rejected():
    model = ca.HDRAutoencoder(config=TINY)
    x = torch.zeros(1, 1, 16, 16, 16)
    with pytest.raises(ca.InputShapeError, match=r"label ids must be in \[0, 99\]"):
        model.encode_pre_quant(x, torch.full((1, 1, 16, 16, 16), 150))
    with pytest.raises(ca.InputShapeError, match="labels must have shape"):
        model.encode_pre_quant(x, torch.zeros(1, 1, 8, 8, 8, dtype=torch.long))
