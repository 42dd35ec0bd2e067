"""Training engine with an adversary (a GAN): both networks update, resume is exact for both,
two torchrun processes match one, and misuse is refused with a clear error."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from ctsynth_bench.train import (
    Adversary,
    TrainConfig,
    TrainConfigError,
    read_metrics,
    read_trainer_state,
    train,
)
from safetensors.torch import load_file
from torch import nn

# The tiny GAN is written once, as source, so the torchrun script below uses the very same code.
GAN_SOURCE = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Gen(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 4))

        def config_dict(self):
            return {}

        def forward(self, z):
            return self.body(z)

    class Critic(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))

        def config_dict(self):
            return {}

        def forward(self, x):
            return self.body(x)

    class Points(torch.utils.data.Dataset):
        def __init__(self):
            g = torch.Generator().manual_seed(3)
            self.x = torch.randn(32, 4, generator=g) * 0.3 + torch.tensor([1.0, -1.0, 0.5, 0.0])

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return self.x[i]

    START = 2  # the adversary joins at this step

    def gen_loss(model, real, generator, critic, step):
        z = torch.randn(real.shape, generator=generator, device=generator.device)
        fake = model(z.to(real.device))
        loss = (fake - real).pow(2).mean()  # a mean over the batch, as the engine wants
        logs = {"l2": float(loss.detach())}
        if step >= START:
            adv = nn.functional.softplus(-critic(fake)).mean()
            loss = loss + 0.1 * adv
            logs["adv"] = float(adv.detach())
        return loss, logs, fake.detach()

    def critic_loss(critic, real, fake, generator, step):
        if step < START:
            return None, {}
        d = critic(torch.cat([real, fake]))
        n = real.shape[0]
        loss = nn.functional.softplus(-d[:n]).mean() + nn.functional.softplus(d[n:]).mean()
        return loss, {"critic": float(loss.detach())}
    """
)
_ns: dict = {}
exec(compile(GAN_SOURCE, "tiny_gan", "exec"), _ns)
Gen, Critic, Points = _ns["Gen"], _ns["Critic"], _ns["Points"]
gen_loss, critic_loss = _ns["gen_loss"], _ns["critic_loss"]


def _run(folder, steps, *, resume=False, **kw):
    torch.manual_seed(0)
    gen, critic = Gen(), Critic()
    config = TrainConfig(max_steps=steps, batch_size=8, lr=5e-3, checkpoint_every=3, log_every=1)
    result = train(
        gen, gen_loss, Points(), run_dir=folder, stage="gan", config=config, resume=resume,
        progress=False, adversary=Adversary(model=critic, loss_fn=critic_loss, name="critic"), **kw,
    )  # fmt: skip
    return gen, critic, result


def test_both_networks_train_and_resume_is_exact_for_both(tmp_path):
    torch.manual_seed(0)
    gen0, critic0 = Gen(), Critic()
    # Before START the adversary's loss is None: it is not updated, the model is.
    gen, critic, _ = _run(tmp_path / "early", 2)
    assert all(torch.equal(v, critic0.state_dict()[k]) for k, v in critic.state_dict().items())
    assert not torch.equal(gen.state_dict()["body.0.weight"], gen0.state_dict()["body.0.weight"])

    gen_a, critic_a, res_a = _run(tmp_path / "a", 10)
    assert res_a.step == 10
    moved = critic_a.state_dict()["body.0.weight"] - critic0.state_dict()["body.0.weight"]
    assert moved.abs().max() > 1e-3  # the adversary trained
    _run(tmp_path / "b", 5)  # interrupted at a step that is not a checkpoint multiple
    torch.manual_seed(99)  # resume restores every random state it needs
    gen_b, critic_b, res_b = _run(tmp_path / "b", 10, resume=True)
    assert res_b.resumed_from == 5 and res_b.step == 10
    for straight, resumed in ((gen_a, gen_b), (critic_a, critic_b)):
        for key, value in straight.state_dict().items():
            assert torch.equal(value, resumed.state_dict()[key]), key
    # The files agree too: the model, and the adversary in its own folder.
    for sub in ("", "critic"):
        a = load_file(str(tmp_path / "a" / "gan" / sub / "model.safetensors"))
        b = load_file(str(tmp_path / "b" / "gan" / sub / "model.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    critic_file = load_file(str(tmp_path / "a" / "gan" / "critic" / "model.safetensors"))
    assert torch.equal(critic_file["body.0.weight"], critic_a.state_dict()["body.0.weight"])
    meta, tensors = read_trainer_state(tmp_path / "b" / "gan")
    assert meta["settings"]["adversary"] == "critic" and "adversary_optimizer" in meta
    assert any(k.startswith("adversary/") for k in tensors)
    assert any(k.startswith("adv_optim/") for k in tensors)
    rows = read_metrics(tmp_path / "a" / "gan")
    assert [r["step"] for r in rows] == list(range(1, 11))
    assert "adversary_loss" not in rows[1] and "adversary_loss" in rows[2]  # joins at step 3
    assert "critic" in rows[-1] and "adv" in rows[-1] and "l2" in rows[0]


def test_resuming_without_the_adversary_is_refused(tmp_path):
    _run(tmp_path, 3)
    torch.manual_seed(0)
    with pytest.raises(TrainConfigError, match="adversary"):
        train(Gen(), lambda m, b, g: (m(b).pow(2).mean(), {}), Points(), run_dir=tmp_path,
              stage="gan", config=TrainConfig(max_steps=6, batch_size=8, lr=5e-3,
                                              checkpoint_every=3, log_every=1),
              resume=True, progress=False)  # fmt: skip


def test_misuse_is_refused_with_a_clear_error(tmp_path):
    adv = Adversary(model=Critic(), loss_fn=critic_loss, name="critic")
    with pytest.raises(TrainConfigError, match="grad_accum=1"):
        train(Gen(), gen_loss, Points(), run_dir=tmp_path / "a", stage="gan",
              config=TrainConfig(max_steps=2, batch_size=8, grad_accum=2), adversary=adv,
              progress=False)  # fmt: skip
    with pytest.raises(TrainConfigError, match="name must be letters"):
        train(Gen(), gen_loss, Points(), run_dir=tmp_path / "b", stage="gan",
              config=TrainConfig(max_steps=2, batch_size=8),
              adversary=Adversary(model=Critic(), loss_fn=critic_loss, name="../x"),
              progress=False)  # fmt: skip
    with pytest.raises(TrainConfigError, match="must return"):
        train(Gen(), lambda m, b, g, a, s: (m(b).pow(2).mean(), {}), Points(),
              run_dir=tmp_path / "c", stage="gan", config=TrainConfig(max_steps=2, batch_size=8),
              adversary=adv, progress=False)  # fmt: skip
    with pytest.raises(TrainConfigError, match="no trainable parameters"):
        train(Gen(), gen_loss, Points(), run_dir=tmp_path / "d", stage="gan",
              config=TrainConfig(max_steps=2, batch_size=8),
              adversary=Adversary(model=nn.Identity(), loss_fn=critic_loss, save_fn=print),
              progress=False)  # fmt: skip
    with pytest.raises(TrainConfigError, match="cannot save a Identity"):
        train(Gen(), gen_loss, Points(), run_dir=tmp_path / "e", stage="gan",
              config=TrainConfig(max_steps=2, batch_size=8),
              adversary=Adversary(model=nn.Identity(), loss_fn=critic_loss),
              progress=False)  # fmt: skip
    assert not any((tmp_path / x).exists() for x in "abde")  # refused before writing


DDP_SCRIPT = GAN_SOURCE + textwrap.dedent(
    """
    import sys
    from ctsynth_bench.train import Adversary, TrainConfig, dist_info, train

    torch.manual_seed(0)
    gen, critic = Gen(), Critic()
    config = TrainConfig(max_steps=8, batch_size=8, lr=5e-3, checkpoint_every=4, log_every=4)
    result = train(gen, gen_loss, Points(), run_dir=sys.argv[1], stage="gan", config=config,
                   adversary=Adversary(model=critic, loss_fn=critic_loss, name="critic"))
    # one file per rank (RUN.rankK.txt): two processes printing to one pipe may not both reach it
    with open(f"{sys.argv[1]}.rank{dist_info().rank}.txt", "w") as f:
        f.write(f"RANK {dist_info().rank} WORLD {dist_info().world_size} STEP {result.step}")
    """
)


def test_two_processes_train_both_networks_like_one(tmp_path):
    """Under torchrun both networks are DDP-wrapped: 2 x 4 samples give the 1 x 8 result. The
    loss draws its noise per rank, so the script makes the generator's input deterministic."""
    script = tmp_path / "gan_ddp.py"
    # A deterministic variant: the fake is the generator applied to the real batch itself.
    script.write_text(
        DDP_SCRIPT.replace(
            "z = torch.randn(real.shape, generator=generator, device=generator.device)",
            "z = real.flip(-1)",
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, str(script), str(tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(script), str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    for k in (0, 1):
        done = tmp_path / f"two.rank{k}.txt"
        assert done.is_file(), (two.stdout[-2000:], two.stderr[-2000:])
        assert done.read_text() == f"RANK {k} WORLD 2 STEP 8"
    for sub in ("", "critic"):
        a = load_file(str(tmp_path / "one" / "gan" / sub / "model.safetensors"))
        b = load_file(str(tmp_path / "two" / "gan" / sub / "model.safetensors"))
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)
    torch.manual_seed(0)
    Gen()
    init_critic = Critic().state_dict()["body.0.weight"]
    trained = load_file(str(tmp_path / "one" / "gan" / "critic" / "model.safetensors"))
    assert not torch.allclose(init_critic, trained["body.0.weight"], atol=1e-3)
