"""LevelContextUNet: identical to MONAI's forward with one context; routes per-level contexts level by level."""

from __future__ import annotations

import pytest
import torch
from lesion_inpaint import LevelContextUNet, ShapeError, UNetConfig, build_unet
from monai.networks.nets import DiffusionModelUNet

CFG = UNetConfig(
    in_channels=2,
    out_channels=1,
    channels=(8, 16),
    attention_levels=(True, True),
    num_res_blocks=1,
    num_head_channels=8,
    norm_num_groups=4,
    context_dim=6,
)


def _net() -> LevelContextUNet:
    net = build_unet(CFG).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # MONAI zero-initialises output layers; randomise so outputs depend on inputs
        for p in net.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return net


def test_single_context_equals_monai():
    net = _net()
    ref = DiffusionModelUNet(
        spatial_dims=3, in_channels=2, out_channels=1, channels=(8, 16), attention_levels=(True, True),
        num_res_blocks=1, num_head_channels=8, norm_num_groups=4, with_conditioning=True,
        cross_attention_dim=6,
    ).eval()
    ref.load_state_dict(net.state_dict())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 2, 8, 8, 8, generator=g)
    ctx = torch.randn(2, 3, 6, generator=g)
    t = torch.tensor([3, 700])
    with torch.no_grad():
        out = net(x, t, context=ctx)
        torch.testing.assert_close(out, ref(x, t, context=ctx), rtol=0, atol=0)
        # the same context given once per level is the same network as MONAI's
        per_level = net(x, t, context=[ctx, ctx])
        torch.testing.assert_close(per_level, ref(x, t, context=ctx), rtol=0, atol=0)
    assert out.abs().mean() > 1e-3


def test_constructor_takes_monai_keywords():
    net = LevelContextUNet(**CFG.unet_kwargs())
    assert net.context_levels == (0, 1) and net.num_levels == 2
    with pytest.raises(TypeError):
        LevelContextUNet(CFG)  # type: ignore[misc]


def _record_contexts(net):
    seen: list[tuple[str, torch.Tensor]] = []
    handles = []
    for name, mod in net.named_modules():
        if name.endswith("attn2"):
            handles.append(
                mod.register_forward_hook(
                    lambda m, a, kw, out, name=name: seen.append((name, kw["context"])), with_kwargs=True
                )
            )
    return seen, handles


def test_each_level_receives_its_own_context():
    net = _net()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 2, 8, 8, 8, generator=g)
    c0, c1 = torch.randn(2, 1, 6, generator=g), torch.randn(2, 4, 6, generator=g)
    seen, handles = _record_contexts(net)
    with torch.no_grad():
        out = net(x, torch.tensor([5, 5]), context=[c0, c1])
    for h in handles:
        h.remove()
    by_block = {name.split(".attentions")[0] if ".attentions" in name else name.split(".attention")[0]: ctx
                for name, ctx in seen}
    assert by_block["down_blocks.0"] is c0
    assert by_block["down_blocks.1"] is c1
    assert by_block["middle_block"] is c1
    assert by_block["up_blocks.0"] is c1  # coarsest up block
    assert by_block["up_blocks.1"] is c0  # finest up block
    with torch.no_grad():
        assert not torch.allclose(out, net(x, torch.tensor([5, 5]), context=c1))


def test_context_errors():
    net = _net()
    x = torch.randn(1, 2, 8, 8, 8)
    with pytest.raises(ShapeError, match="one per UNet resolution level"):
        net(x, torch.tensor([1]), context=[torch.randn(1, 1, 6)] * 5)  # the old 2n+1 form is gone
    with pytest.raises(ShapeError, match="D=6"):
        net(x, torch.tensor([1]), context=torch.randn(1, 1, 5))
    with pytest.raises(ShapeError, match="conditional"):
        net(x, torch.tensor([1]), context=None)
    with pytest.raises(ShapeError, match="UNet input"):
        net(torch.randn(1, 3, 8, 8, 8), torch.tensor([1]), context=torch.randn(1, 1, 6))
