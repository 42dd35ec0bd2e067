"""The GAN training surface under DistributedDataParallel (one gloo process, FileStore)."""

from __future__ import annotations

import copy

import ct_autoencoder as ca
import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

VQ = ca.VQGANConfig(name="t", channels=(4, 8), strides=(2, 1), num_res_layers=1, num_embeddings=16,
                    embedding_dim=3, crop_size=16, disc_channels=4, disc_layers=2, adversarial_start=0,
                    dead_code_interval=1)
HDR = ca.HDRAutoencoderConfig(name="t", channels=(4, 8), num_res_blocks=1, norm_groups=1, latent_channels=3,
                              num_embeddings=16, num_label_classes=10, label_embed_dim=2, crop_size=16,
                              disc_channels=4, disc_layers=2, num_frames=1, adversarial_start=0,
                              label_dropout=0.5, dead_code_interval=1)


@pytest.fixture
def process_group(tmp_path):
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("cfg", [VQ, HDR], ids=["vqgan", "hdr"])
def test_generator_and_discriminator_steps_under_ddp(process_group, cfg):
    torch.manual_seed(0)
    ref_model, ref_disc = ca.build_model(cfg), ca.Discriminators(config=cfg)
    model, disc = DDP(copy.deepcopy(ref_model)), DDP(copy.deepcopy(ref_disc))
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 1, 16, 16, 16, generator=g) * 2 - 1
    labels = torch.randint(0, 10, (2, 1, 16, 16, 16), generator=g) if cfg is HDR else None

    # generator step: through both DDP wrappers; gradients reach every trainable parameter and
    # equal those of the unwrapped modules (world size 1: the all-reduced mean is the local grad)
    loss, logs, out = ca.generator_loss(model, disc, x, labels=labels, step=0, generator=torch.Generator().manual_seed(2))
    loss.backward()
    ref_loss, _, _ = ca.generator_loss(ref_model, ref_disc, x, labels=labels, step=0,
                                       generator=torch.Generator().manual_seed(2))
    ref_loss.backward()
    torch.testing.assert_close(loss, ref_loss)
    for (name, p), q in zip(model.module.named_parameters(), ref_model.parameters(), strict=True):
        if not p.requires_grad:
            continue
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    assert any(float(p.grad.abs().sum()) > 0 for p in model.parameters() if p.requires_grad)

    # discriminator step: one forward of the wrapped discriminator on real and fake
    disc.zero_grad(set_to_none=True)
    d_loss, d_logs = ca.discriminator_loss(disc, x, out.reconstruction, step=0, generator=g)
    d_loss.backward()
    assert d_logs
    for name, p in disc.module.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name

    # whole steps, twice (DDP's reducer fails on the next forward if a step left a gradient
    # unreduced), with codebook upkeep and its broadcast of revived codes
    opts = ca.make_optimizers(model, disc)
    before = [p.detach().clone() for p in disc.parameters()]
    for step in (1, 2):
        logs = ca.training_step(model, disc, x, opts, step=step, labels=labels, generator=g)
    assert "revived_codes" in logs
    assert any(not torch.equal(a, b) for a, b in zip(before, disc.parameters(), strict=True))
    # the scale measurement all-reduces its sums; with one rank it equals the local value
    batches = [x[:1], x[1:]]
    sf = ca.measure_scale_factor(model.module, batches)
    model.module.eval()
    with torch.no_grad():
        z = torch.cat([model.module.encode_stage_2_inputs(b) for b in batches]).double()
    assert sf == pytest.approx(1.0 / float(z.std(unbiased=False)), rel=1e-9)
