"""The shipped demo LesionDiffusion weights load and still follow their text.

A small sample of the text-control measurement (held-out boxes, same noise across prompts, no
ablation) on the weights in ``ctsynth_bench/_weights/lesiondiffusion_demo``. After a change of the
networks or the conditioning, loading fails or these margins collapse, and the weights must be
retrained with ``packages/bench/scripts/train_demo_weights.py``.
"""

from __future__ import annotations

import json

import torch
from ctsynth_bench.lesiondiffusion.control import measure_control
from ctsynth_bench.lesiondiffusion.system import LesionDiffusionSystem, shipped_weights_dir


def test_shipped_files_are_small_and_described():
    folder = shipped_weights_dir()
    files = [f for f in folder.rglob("*") if f.is_file()]
    assert {"lesiondiffusion.json", "MODEL_CARD.md", "control.json"} <= {f.name for f in files}
    assert all(f.stat().st_size < 4 * 1024 * 1024 for f in files)
    card = (folder / "MODEL_CARD.md").read_text()
    assert "Measured text control" in card and "train_demo_weights.py" in card


def test_shipped_weights_follow_their_text():
    torch.set_num_threads(1)
    system = LesionDiffusionSystem.load(None)
    assert system.run_dir is None and system.trained_with_text
    res = measure_control(system, n=8, seed=0, null=False)
    # shape (n=30 for the card: round-like above irregular in every pair, p < 1e-9)
    assert res.sphericity_gap > 0.05 and res.shape_pairs_right >= 7 / 8, res.summary()
    # density (n=30 for the card: hypo < iso < hyper in every box, about 50 HU apart)
    dh = res.delta_hu
    assert dh["hypodense"] + 20 < dh["isodense"] < dh["hyperdense"] - 20, dh
    assert min(res.pair_fractions.values()) >= 7 / 8, res.pair_fractions
    # size: the mask spans its requested box
    assert res.size_within_30 >= 0.75, res.summary()
    recorded = json.loads((shipped_weights_dir() / "control.json").read_text())
    assert recorded["n_shape"] >= 30 and recorded["n_density"] >= 30
    assert recorded["shape_passes"] and recorded["density_passes"] and recorded["size_passes"]
    assert recorded["ablation_holds"]
