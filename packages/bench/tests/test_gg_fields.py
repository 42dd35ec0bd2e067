"""The field probe: it makes the knowledge injection carry the prompt's count and size.

Measured on the first shipped TCSS (trained without it): changing the count in a prompt moved the
per-level contexts by 0.07 % and the network's output not at all, while changing the site moved
them by 190 %. The probe reads site, count and size linearly from the contexts and its
cross-entropy trains the injection module.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cat_diffusion import SemanticSynthesizer
from ctsynth_bench.guidegen._labels import TUMOUR
from ctsynth_bench.guidegen.presets import get_preset
from ctsynth_bench.guidegen.prompts import COUNTS, SITES, SIZES, PromptFields, sample_fields
from ctsynth_bench.guidegen.stages import (
    FieldProbe,
    TCSSData,
    TCSSNet,
    field_targets,
    make_field_probe,
    train_tcss,
)
from ctsynth_bench.text import encode_prompts, load_text_encoder


def test_field_targets_index_the_vocabulary() -> None:
    f = PromptFields.from_dict(
        dict(age=50, race="asian", sex="male", site="lung", t=3, n=0, m=0, count=3, size="large")
    )
    assert field_targets([f]).tolist() == [[list(SITES).index("lung"), 2, SIZES.index("large")]]


def test_probe_loss_skips_dropped_prompts_and_has_one_head_per_field() -> None:
    probe = FieldProbe(dim=8, levels=2)
    levels = [torch.randn(3, 4, 8), None, torch.randn(3, 4, 8)]
    logits = probe(levels)
    assert [lg.shape[-1] for lg in logits] == [len(SITES), max(max(c) for c in COUNTS.values()), 2]
    targets = torch.tensor([[0, 0, 0], [1, 1, 1], [2, 2, 0]])
    none = probe.loss(levels, targets, torch.zeros(3, dtype=torch.bool))
    assert float(none) == 0.0
    some = probe.loss(levels, targets, torch.tensor([True, False, True]))
    assert float(some) > 0.0


def test_plain_cross_attention_gets_no_probe() -> None:
    p = get_preset("demo", tcss={"conditioning": "crossattn"})
    assert make_field_probe(SemanticSynthesizer(config=p.tcss), 1.0) is None
    p = get_preset("demo")
    assert p.field_weight > 0
    assert make_field_probe(SemanticSynthesizer(config=p.tcss), p.field_weight) is not None
    assert make_field_probe(SemanticSynthesizer(config=p.tcss), 0.0) is None


def _count_gap(synth: SemanticSynthesizer, tokens: torch.Tensor, mask: torch.Tensor) -> float:
    """Relative change of the contexts between the count-1 and count-3 prompts (rows 0, 1)."""
    with torch.no_grad():
        lv = [x for x in synth.encode_context(tokens, mask) if x is not None]
    return float(np.mean([float((x[1] - x[0]).norm() / x[0].norm()) for x in lv]))


def _block_data(
    bank: list[PromptFields], tumours: tuple[tuple[int, int, int], ...] = ()
) -> tuple[TCSSData, torch.Tensor, torch.Tensor]:
    """One map per prompt: a liver block in a 16^3 grid, with tumour voxels at ``tumours``."""
    tokens, mask = encode_prompts(load_text_encoder("minilm"), [f.text for f in bank])
    labels = torch.zeros(len(bank), 1, 16, 16, 16, dtype=torch.uint8)
    labels[:, :, 4:12, 4:12, 4:12] = 3
    for z, y, x in tumours:
        labels[:, :, z, y, x] = TUMOUR
    data = TCSSData(
        labels=labels,
        choices=torch.arange(len(bank))[:, None],
        bank_tokens=tokens,
        bank_mask=mask,
        bank_fields=field_targets(bank),
    )
    return data, tokens, mask


def test_probe_makes_the_count_reach_the_contexts() -> None:
    """Same training with and without the probe; only the probe's run carries the count."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    base = sample_fields(rng, site="liver", count=1, size="small").to_dict()
    bank = [PromptFields.from_dict({**base, "count": c}) for c in (1, 3)]
    bank += [sample_fields(rng) for _ in range(14)]
    data, tokens, mask = _block_data(bank)
    gaps = {}
    for w in (0.0, 1.0):
        torch.manual_seed(0)
        preset = get_preset("demo", field_weight=w, batch_size=4, cond_drop=0.0)
        synth = SemanticSynthesizer(config=preset.tcss)
        before = _count_gap(synth, tokens, mask)
        trained, res = train_tcss(synth, data, preset, max_steps=60, seed=0)
        gaps[w] = _count_gap(trained, tokens, mask)
        assert ("fields" in res["log"][-1]) == (w > 0)
    assert gaps[1.0] > 3 * gaps[0.0], (before, gaps)


def test_tcssnet_returns_the_same_logits_with_or_without_field_targets() -> None:
    p = get_preset("demo")
    synth = SemanticSynthesizer(config=p.tcss).eval()
    net = TCSSNet(synth, make_field_probe(synth, 1.0))
    x = torch.nn.functional.one_hot(torch.zeros(2, 16, 16, 16, dtype=torch.long), 21)
    x = x.permute(0, 4, 1, 2, 3).float()
    t = torch.tensor([5, 50])
    tok, msk = torch.randn(2, 7, 384), torch.ones(2, 7, dtype=torch.bool)
    a = net(x, t, context=(tok, msk))
    assert net.field_loss is None
    b = net(
        x,
        t,
        context=(tok, msk, torch.zeros(2, 3, dtype=torch.long), torch.ones(2, dtype=torch.bool)),
    )
    assert net.field_loss is not None and float(net.field_loss) > 0
    torch.testing.assert_close(a, b)


def test_perturb_tumours_adds_or_removes_exactly_one() -> None:
    """Count-corrective inputs: each perturbed map has one tumour more or one fewer, in its organ."""
    import torch.nn.functional as F
    from ctsynth_bench.guidegen.data import load_gg_templates, make_case, tumour_components
    from ctsynth_bench.guidegen.stages import perturb_tumours

    temps = load_gg_templates()
    cases = [make_case(temps, 3, i, with_ct=False) for i in range(12)]
    lab = torch.from_numpy(np.stack([c.labels for c in cases])).long()
    x = F.one_hot(lab, 21).permute(0, 4, 1, 2, 3).float()
    zero = torch.zeros(12, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    assert perturb_tumours(x, zero, p=0.0, t_max=10, generator=g) is x
    assert perturb_tumours(x, zero + 10, p=1.0, t_max=10, generator=g) is x
    y = perturb_tumours(x, zero, p=1.0, t_max=10, generator=g)
    changes = []
    for a, b in zip(x.argmax(1).numpy(), y.argmax(1).numpy(), strict=True):
        ka, kb = tumour_components(a)[1], tumour_components(b)[1]
        changed = a != b
        if changed.any():
            assert abs(kb - ka) == 1, (ka, kb)
            # only tumour <-> one organ class changes
            classes = set(a[changed].tolist()) | set(b[changed].tolist())
            assert 20 in classes and len(classes) == 2, classes
        changes.append(kb - ka)
    assert changes.count(1) >= 3 and changes.count(-1) >= 3, changes


@pytest.mark.parametrize("name", ["demo", "paper"])
def test_every_preset_builds_all_its_networks(name: str) -> None:
    """The paper preset once asked for 32 norm groups at width 64, which the autoencoder refuses."""
    from ctsynth_bench.guidegen.stages import make_autoencoder, make_generator

    p = get_preset(name)
    synth = SemanticSynthesizer(config=p.tcss)
    ae = make_autoencoder(p)
    gen = make_generator(p)
    assert all(sum(t.numel() for t in m.parameters()) > 0 for m in (synth, ae, gen))


def test_demo_noise_never_makes_a_tumour_and_the_paper_keeps_uniform_noise() -> None:
    """The demo TCSS's noise leaves the tumour class out: a tumour voxel in ``x_t`` is data."""
    from ctsynth_bench.guidegen.data import load_gg_templates, make_case
    from ctsynth_bench.guidegen.presets import TUMOUR_FREE_NOISE

    assert get_preset("paper").tcss.noise_weights is None
    p = get_preset("demo")
    assert p.tcss.noise_weights == TUMOUR_FREE_NOISE
    sched = SemanticSynthesizer(config=p.tcss).make_scheduler()
    g = torch.Generator().manual_seed(0)
    prior = sched.sample_prior((4, 1, *p.tcss.spatial_size), generator=g)
    assert int((prior == TUMOUR).sum()) == 0
    # every other class is drawn by the noise
    assert len(torch.unique(prior)) == TUMOUR
    case = make_case(load_gg_templates(), 3, 0, with_ct=False, site="liver", count=2)
    x0 = torch.from_numpy(case.labels)[None, None].long().expand(8, 1, -1, -1, -1)
    for t in (10, 100, 199):
        xt = sched.add_noise(x0, None, t, generator=g)
        assert not bool(((xt == TUMOUR) & (x0 != TUMOUR)).any())
        if t == 100:  # about half of the tumour voxels survive mid-way
            assert 0 < int((xt == TUMOUR).sum()) < int((x0 == TUMOUR).sum())


def test_tumour_mass_term_is_trained_only_when_its_weight_is_set() -> None:
    """``mass_weight`` adds cat_diffusion's class-mass term for the tumour, split at ``mass_near``."""
    torch.set_num_threads(1)
    bank = [sample_fields(np.random.default_rng(i)) for i in range(4)]
    data, _, _ = _block_data(bank, tumours=((6, 6, 6), (10, 10, 10)))
    logs = {}
    for w in (0.0, 0.5):
        torch.manual_seed(0)
        preset = get_preset("demo", mass_weight=w, batch_size=2)
        assert preset.mass_near == 2
        _, res = train_tcss(
            SemanticSynthesizer(config=preset.tcss), data, preset, max_steps=1, seed=0
        )
        logs[w] = res["log"][-1]
    assert "mass" not in logs[0.0]
    row = logs[0.5]
    assert row["mass"] > 0
    assert abs(row["loss"] - (row["kl"] + row["ce"] + 0.5 * row["mass"])) < 1e-4 * row["loss"]
    # the same step without the term has the same KL and CE (the term only adds to the loss)
    assert abs(logs[0.0]["ce"] - row["ce"]) < 1e-6 and abs(logs[0.0]["kl"] - row["kl"]) < 1e-6
