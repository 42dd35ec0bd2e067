"""A run killed with SIGKILL mid-training resumes to bit-identical final weights (CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import torch
from safetensors.torch import load_file

SCRIPT = textwrap.dedent(
    """
    import sys, time
    import torch
    from torch import nn
    from ctsynth_bench.train import TrainConfig, train

    run_dir, resume, pause = sys.argv[1], sys.argv[2] == "1", float(sys.argv[3])

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv3d(1, 4, 3, padding=1), nn.SiLU(), nn.Conv3d(4, 1, 3, padding=1)
            )

        def config_dict(self):
            return {}

        def forward(self, x):
            return self.body(x)

    class Crops(torch.utils.data.Dataset):  # random crop offsets from the global generator
        def __init__(self):
            self.volume = torch.randn(1, 9, 9, 9, generator=torch.Generator().manual_seed(1))

        def __len__(self):
            return 10

        def __getitem__(self, i):
            o = torch.randint(0, 4, (3,)).tolist()
            return self.volume[:, o[0]:o[0] + 6, o[1]:o[1] + 6, o[2]:o[2] + 6]

    def loss_fn(model, x, generator):
        time.sleep(pause)
        noise = torch.randn(x.shape, generator=generator)
        return (model(x + 0.3 * noise) - x).pow(2).mean(), {}

    torch.manual_seed(0)
    config = TrainConfig(
        max_steps=30, batch_size=4, grad_accum=2, lr=3e-3, ema_decay=0.8,
        checkpoint_every=5, log_every=5,
    )
    train(Net(), loss_fn, Crops(), run_dir=run_dir, stage="s", config=config, resume=resume,
          progress=False)
    """
)


def _python(script, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return [sys.executable, str(script), *map(str, args)], env


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    script = tmp_path / "train_resume.py"
    script.write_text(SCRIPT)
    cmd, env = _python(script, tmp_path / "straight", 0, 0)
    straight = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    cmd, env = _python(script, tmp_path / "killed", 0, 0.15)
    victim = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "killed" / "s" / "trainer_state.json"
    deadline = time.monotonic() + 150
    step = 0
    while time.monotonic() < deadline and victim.poll() is None:
        if state.exists():
            step = json.loads(state.read_text())["step"]
            if step >= 10:
                break
        time.sleep(0.05)
    assert victim.poll() is None, "the run ended before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    killed_at = json.loads(state.read_text())["step"]
    assert 10 <= killed_at < 30
    resumed = subprocess.run(
        _python(script, tmp_path / "killed", 1, 0)[0], env=env, capture_output=True, text=True,
        timeout=150,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _, err = straight.communicate(timeout=150)
    assert straight.returncode == 0, err[-3000:]
    for name in ("model.safetensors", "ema.safetensors"):
        a = load_file(str(tmp_path / "straight" / "s" / name))
        b = load_file(str(tmp_path / "killed" / "s" / name))
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    steps = [json.loads(x)["step"] for x in (tmp_path / "killed" / "s" / "metrics.jsonl").open()]
    assert steps == [5, 10, 15, 20, 25, 30]
    assert sorted(p.name for p in (tmp_path / "killed" / "s").glob("trainer_state-*")) == [
        "trainer_state-000000030.safetensors"
    ]
    assert not list((tmp_path / "killed").rglob("*.tmp"))
