"""``bench perf lesiondiffusion``: seconds per lesion by stage, CT-size scaling, sampler overhead, memory.

Measured in one process on one system:

* **stages**: seconds per lesion for placing the box (``place``), resampling the model grid
  (``crop``), LMNet (``mask``), LINet with the codec (``inpaint``), resampling back and pasting
  (``paste``), and writing the case (``write``: the whole CT, so it does grow with the CT);
* **scaling**: the same lesion (fixed report, same box position in mm, same seed) in a 128^3 CT and
  a 512x512x300 CT, both made from the bundled abdomen by resampling, so the anatomy is the same
  and only the voxel count changes; ``ratio`` is synthesis time (place .. paste) on the large CT
  over the small one (goal <= 1.2), ``ratio_with_write`` adds writing the output;
* **sampler overhead**: wall time of the mask and inpaint stages over the time spent inside the
  networks' forward calls (forward hooks), i.e. what the DDIM loop, guidance, the codec and the
  thresholding cost on top of the bare networks (goal <= 1.05); plus
  ``lesion_inpaint.benchmark_sampler``'s load-robust estimate for the library sampler;
* **memory**: peak of Python/numpy allocations (tracemalloc) during one synthesis per CT size, the
  process's peak resident set (``resource``), and ``torch.cuda.max_memory_allocated`` on CUDA.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
import tracemalloc
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import report_bbox

from .pipeline import (
    CTInput,
    ReportSource,
    ct_input_from_arrays,
    place_lesion,
    synthesize_lesion,
    write_case,
)

__all__ = ["PerfResult", "format_table", "run_perf"]

log = logging.getLogger(__name__)

SMALL_SHAPE = (128, 128, 128)
LARGE_SHAPE = (512, 512, 300)
STAGES = ("place", "crop", "mask", "inpaint", "paste", "write")


@dataclass
class PerfResult:
    """All numbers of one ``bench perf lesiondiffusion`` run (seconds, bytes)."""

    device: str
    system: dict[str, Any]
    steps: int
    guidance: float
    repeats: int
    stages_small: dict[str, float]
    stages_large: dict[str, float]
    synth_small_s: float
    synth_large_s: float
    ratio: float
    ratio_with_write: float
    network_s: dict[str, float]
    sampler_overhead: dict[str, float]
    library_sampler_overhead: float | None
    peak_numpy_bytes: dict[str, int]
    peak_rss_bytes: int
    cuda_peak_bytes: int | None
    shapes: dict[str, list[int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_ct(shape: tuple[int, int, int]) -> CTInput:
    """The bundled abdomen resampled to ``shape`` voxels over the same field of view (int16 HU)."""
    from scipy import ndimage

    from ..data import load_case

    case = load_case("abdomen")
    zoom = np.asarray(shape, dtype=np.float64) / np.asarray(case.ct.shape)
    ct = ndimage.zoom(
        case.ct.astype(np.float32), zoom, order=1, output=np.float32, grid_mode=True, mode="nearest"
    )
    organs = ndimage.zoom(
        case.organs.astype(np.uint8), zoom, order=0, grid_mode=True, mode="nearest"
    )
    affine = case.affine.copy()
    affine[:3, :3] = case.affine[:3, :3] / zoom[None, :]
    # keep the field of view: voxel corners stay where they were
    affine[:3, 3] = case.affine[:3, 3] + case.affine[:3, :3] @ (0.5 / zoom - 0.5)
    return ct_input_from_arrays(
        np.rint(ct).astype(np.int16), organs, affine, name=f"abdomen_{'x'.join(map(str, shape))}"
    )


def _fixed_report() -> report_bbox.Report:
    return report_bbox.sample_report(
        np.random.default_rng(0),
        lesion_type="liver_cancer",
        size=[30, 26, 24],
        lesion_location="within the parenchymal organ",
        density="hypodense",
        shape="round-like",
    )


class _NetTimer:
    """Forward hooks that add up the time spent inside a module's forward calls."""

    def __init__(self, module: Any, device: Any) -> None:
        self.total = 0.0
        self._t0 = 0.0
        self._device = device
        self._handles = [
            module.register_forward_pre_hook(self._pre),
            module.register_forward_hook(self._post),
        ]

    def _sync(self) -> None:
        import torch

        if getattr(self._device, "type", "cpu") == "cuda":
            torch.cuda.synchronize(self._device)

    def _pre(self, *_: Any) -> None:
        self._sync()
        self._t0 = time.perf_counter()

    def _post(self, *_: Any) -> None:
        self._sync()
        self.total += time.perf_counter() - self._t0

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def _one(
    system: Any,
    inp: CTInput,
    report: report_bbox.Report,
    *,
    seed: int,
    steps: int | None,
    guidance: float | None,
    write_to: Path | None,
) -> dict[str, float]:
    import torch

    t0 = time.perf_counter()
    rep, box = place_lesion(ReportSource(report=report), inp, np.random.default_rng(seed))
    place = time.perf_counter() - t0
    gen = torch.Generator(device="cpu").manual_seed(seed)
    res = synthesize_lesion(system, inp, rep, box, generator=gen, steps=steps, guidance=guidance)
    times = {"place": place, **res.timings}
    if write_to is not None:
        t0 = time.perf_counter()
        write_case(write_to, "perf_00000", inp, res, {"perf": True})
        times["write"] = time.perf_counter() - t0
    return times


def run_perf(
    system: Any,
    *,
    steps: int | None = None,
    guidance: float | None = None,
    repeats: int = 3,
    library_check: bool = True,
    progress: bool = False,
) -> PerfResult:
    """Measure the system (see the module docstring); ``repeats`` timed lesions per CT size."""
    import resource

    import torch

    from .pipeline import system_info

    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    device = torch.device(getattr(system, "device", "cpu"))
    report = _fixed_report()
    cts = {"small": make_ct(SMALL_SHAPE), "large": make_ct(LARGE_SHAPE)}
    out: dict[str, dict[str, list[float]]] = {k: {s: [] for s in STAGES} for k in cts}
    timers = (
        {"mask": _NetTimer(system.lmnet, device), "inpaint": _NetTimer(system.linet, device)}
        if hasattr(system, "lmnet")
        else {}
    )
    net_total = {"mask": 0.0, "inpaint": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        _one(
            system, cts["small"], report, seed=0, steps=steps, guidance=guidance, write_to=None
        )  # warm-up
        for r in range(repeats):
            for name, inp in cts.items():  # interleaved, so load changes hit both sizes alike
                for t in timers.values():
                    t.total = 0.0
                times = _one(
                    system,
                    inp,
                    report,
                    seed=r,
                    steps=steps,
                    guidance=guidance,
                    write_to=Path(tmp) / name,
                )
                for k, v in times.items():
                    out[name][k].append(v)
                if name == "small":
                    for k, t in timers.items():
                        net_total[k] += t.total
                if progress:
                    log.info("perf: %s repeat %d done", name, r + 1)
    for t in timers.values():
        t.remove()
    med = {name: {k: statistics.median(v) for k, v in st.items() if v} for name, st in out.items()}
    synth = {name: sum(med[name][k] for k in STAGES if k != "write") for name in med}
    total = {name: synth[name] + med[name].get("write", 0.0) for name in med}
    network = {k: v / repeats for k, v in net_total.items()}
    overhead = {
        k: (statistics.mean(out["small"][k]) / network[k]) if network.get(k) else float("nan")
        for k in ("mask", "inpaint")
    }
    # memory: one synthesis per size under tracemalloc (timings above were taken without it)
    peaks: dict[str, int] = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for name, inp in cts.items():
        tracemalloc.start()
        _one(system, inp, report, seed=0, steps=steps, guidance=guidance, write_to=None)
        peaks[name] = int(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    lib = None
    if library_check:
        from lesion_inpaint.benchmark import benchmark_sampler

        lib = float(
            benchmark_sampler(
                preset="demo",
                model="linet",
                steps=5,
                repeats=2,
                device=device,
                generator=torch.Generator().manual_seed(0),
            ).overhead_ratio
        )
    preset = system.preset
    return PerfResult(
        device=str(device),
        system=system_info(system),
        steps=int(steps if steps is not None else preset.steps),
        guidance=float(guidance if guidance is not None else preset.guidance),
        repeats=repeats,
        stages_small=med["small"],
        stages_large=med["large"],
        synth_small_s=synth["small"],
        synth_large_s=synth["large"],
        ratio=synth["large"] / synth["small"],
        ratio_with_write=total["large"] / total["small"],
        network_s=network,
        sampler_overhead=overhead,
        library_sampler_overhead=lib,
        peak_numpy_bytes=peaks,
        peak_rss_bytes=int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024,
        cuda_peak_bytes=int(torch.cuda.max_memory_allocated(device))
        if device.type == "cuda"
        else None,
        shapes={k: list(v.ct.shape) for k, v in cts.items()},
    )


def format_table(r: PerfResult) -> str:
    """The result as a plain-text table (what ``bench perf`` prints)."""
    mb = 1024 * 1024
    lines = [
        f"LesionDiffusion perf on {r.device}: {r.system['weights']} ({r.system['preset']} preset), "
        f"{r.steps} DDIM steps, guidance {r.guidance:g}, median of {r.repeats}",
        f"{'stage':<10}{'128^3 s':>10}{'512x512x300 s':>16}",
    ]
    for k in STAGES:
        lines.append(
            f"{k:<10}{r.stages_small.get(k, float('nan')):>10.3f}{r.stages_large.get(k, float('nan')):>16.3f}"
        )
    lines += [
        f"{'synthesis':<10}{r.synth_small_s:>10.3f}{r.synth_large_s:>16.3f}",
        f"large / small CT, synthesis: {r.ratio:.3f} (goal <= 1.2); with writing the CT: {r.ratio_with_write:.2f}",
        "sampler overhead over the bare networks: "
        + ", ".join(f"{k} {v:.3f}" for k, v in r.sampler_overhead.items())
        + " (goal <= 1.05)"
        + (
            f"; lesion_inpaint.benchmark_sampler (LINet demo): {r.library_sampler_overhead:.3f}"
            if r.library_sampler_overhead is not None
            else ""
        ),
        "peak numpy memory per synthesis: "
        + ", ".join(f"{k} {v / mb:.1f} MiB" for k, v in r.peak_numpy_bytes.items())
        + f"; process peak RSS {r.peak_rss_bytes / mb:.0f} MiB"
        + (
            f"; CUDA peak {r.cuda_peak_bytes / mb:.0f} MiB" if r.cuda_peak_bytes is not None else ""
        ),
    ]
    return "\n".join(lines)
