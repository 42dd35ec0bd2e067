"""Two CPU processes under torchrun (gloo) reach the weights of one process with the same
global batch (the two processes also accumulate gradients over two micro-steps, so DDP's
``no_sync`` path is covered)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import torch
from safetensors.torch import load_file

SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    from torch import nn
    from ctsynth_bench.train import TrainConfig, dist_info, train

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))

        def config_dict(self):
            return {}

        def forward(self, x):
            return self.body(x)

    class Data(torch.utils.data.Dataset):
        def __init__(self):
            g = torch.Generator().manual_seed(5)
            self.x = torch.randn(40, 6, generator=g)
            self.y = torch.sin(self.x[:, :3] * 2) + self.x[:, 3:]

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return {"x": self.x[i], "y": self.y[i]}

    def loss_fn(model, batch, generator):
        return (model(batch["x"]) - batch["y"]).pow(2).mean(), {}  # a mean over the batch

    torch.manual_seed(0)
    net = Net()
    config = TrainConfig(
        max_steps=12, batch_size=8, grad_accum=int(sys.argv[2]), lr=1e-2, checkpoint_every=5,
        log_every=4,
    )
    result = train(net, loss_fn, Data(), run_dir=sys.argv[1], stage="s", config=config)
    # one file per rank (RUN.rankK.txt): two processes printing to one pipe may not both reach it
    with open(f"{sys.argv[1]}.rank{dist_info().rank}.txt", "w") as f:
        f.write(f"RANK {dist_info().rank} WORLD {dist_info().world_size} STEP {result.step}")
    """
)


def test_two_processes_match_one_process(tmp_path):
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "one"), "1"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(script), str(tmp_path / "two"), "2"],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    for k in (0, 1):
        done = tmp_path / f"two.rank{k}.txt"
        assert done.is_file(), (two.stdout[-2000:], two.stderr[-2000:])
        assert done.read_text() == f"RANK {k} WORLD 2 STEP 12"
    # Only rank 0 shows progress: one bar, not two. Count bar starts, not refreshes: tqdm may
    # redraw the final "12/12" more than once depending on timing.
    assert two.stderr.count("| 0/12 [") == one.stderr.count("| 0/12 [") == 1
    assert "12/12" in two.stderr and "12/12" in one.stderr
    a = load_file(str(tmp_path / "one" / "s" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "s" / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)
    # Training really moved the weights (so equality is not trivially the initial state).
    torch.manual_seed(0)
    init = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    assert not torch.allclose(init.state_dict()["0.weight"], a["body.0.weight"], atol=1e-3)
    # Only rank 0 wrote: one metrics line per logged step, the world size in the manifest.
    steps = [json.loads(x)["step"] for x in (tmp_path / "two" / "s" / "metrics.jsonl").open()]
    assert steps == [4, 8, 12]
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["stages"]["s"]["world_size"] == 2
