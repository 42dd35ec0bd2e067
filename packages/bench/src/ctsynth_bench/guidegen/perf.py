"""``bench perf guidegen``: seconds and peak memory per stage and per volume, for each preset.

The stages of one batch of volumes, run one after another in this process as
``bench synth guidegen`` runs them (:mod:`.pipeline`):

* ``prompt``: the prompt's MiniLM tokens (the encoder is loaded before, once per run, with its
  disk cache of embeddings off, so the encoder itself is timed);
* ``tcss``: the fast categorical sampler, one guided network call per step -> label map;
* ``generator``: the latent generator's DDIM sampling (label map concatenated, text attended);
* ``decode``: the HDR decode of the CT (tile by tile for the paper preset's 256^3);
* ``write``: the CT and its label map as NIfTI, as ``synthesize_to_folder`` writes them.

Weights: the run's own preset uses the run's trained weights; any other preset is built with
random weights (seeded), since time and memory do not depend on the values.

Memory, on the CPU: the **resident set of this process**. Before each stage Python's garbage is
collected, freed heap memory is handed back (glibc ``malloc_trim``) and the kernel's peak-RSS mark is
reset (``/proc/self/clear_refs``); after it the mark (``VmHWM``) is the stage's peak, with the
weights, the text encoder and the interpreter included, and ``growth`` is that peak less the
resident set at the stage's start. Where the mark cannot be reset, the only number is the
process's peak since it started (``ru_maxrss``), reported as such. On CUDA:
``torch.cuda.max_memory_allocated`` (reset before each stage; weights included) and the
allocator's reserved peak. A volume's peak is the largest stage peak.

The paper preset on the CPU runs one network call per stage (one TCSS step, one DDIM step, one
128^3 decoder tile): at 2 cores a whole paper-size volume would take hours. Its per-volume time at
the preset's steps and tiles is then an extrapolation from seconds per call, reported as one. On
CUDA the paper preset runs at the preset's steps, and the result is set against the paper's 8.9 GB
of inference memory and MAISI's 3 s for a 256x256x128 volume (A100, 30 rectified-flow steps); on
the CPU those lines say that they need CUDA.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..exceptions import BenchError
from .pipeline import affines, decode_latents, encode, sample_labels, sample_latents, write_volumes
from .presets import PRESETS, GuideGenPreset
from .system import GuideGenSystem, load_system

__all__ = [
    "MAISI_SECONDS",
    "PAPER_MEMORY_GB",
    "GuideGenPerf",
    "PresetPerf",
    "StagePerf",
    "check_options",
    "format_table",
    "run_perf",
]

log = logging.getLogger(__name__)

STAGES = ("prompt", "tcss", "generator", "decode", "write")
PROMPT = (
    "The patient is a 63-year-old white male. In this imaging, the patient's condition is "
    "described as liver cancer, T2 N0 M0, 2 primary tumours, small."
)
#: GuideGen's inference memory on a GPU (Dai et al., AAAI 2026).
PAPER_MEMORY_GB = 8.9
#: MAISI's published time for one 256x256x128 CT (A100, 30 rectified-flow steps).
MAISI_SECONDS = 3.0
MAISI_CASE = "256x256x128, A100, 30 rectified-flow steps"


@dataclass
class StagePerf:
    """One stage of a batch (median seconds over the repeats, largest peak).

    Attributes:
        seconds: wall seconds for the whole batch.
        steps: loop length run: TCSS and DDIM steps, decoder tiles; 1 for prompt and write.
        full_steps: the loop length at the preset's settings (differs when fewer were run).
        calls: network calls (TCSS: guided calls; generator: UNet calls; decode: decoder calls;
            prompt: encoder calls; write: files written).
        peak_bytes: peak memory during the stage (see the module docstring), None if unknown.
        growth_bytes: peak less the memory in use at the stage's start, None if unknown.
    """

    seconds: float
    steps: int
    full_steps: int
    calls: int
    peak_bytes: int | None
    growth_bytes: int | None

    @property
    def seconds_per_call(self) -> float:
        return self.seconds / max(self.calls, 1)

    @property
    def full_seconds(self) -> float:
        """Seconds at the preset's steps, extrapolated per step when fewer were run."""
        return (
            self.seconds
            if self.steps == self.full_steps
            else self.seconds / self.steps * self.full_steps
        )


@dataclass
class PresetPerf:
    """All stages of one preset.

    Attributes:
        preset: preset name.
        weights: ``"trained (PATH)"`` or ``"random"``.
        mode: ``"full"`` or ``"one call per stage"`` (paper preset on the CPU).
        batch: volumes per batch.
        repeats: timed batches (median).
        warmup: whether an untimed batch (one step per loop) ran first.
        label_shape, ct_shape: the grids.
        stages: per stage, in :data:`STAGES` order.
        volume_seconds: sum of the stage seconds over ``batch`` (as run).
        volume_full_seconds: the same at the preset's steps and tiles (extrapolated when any
            stage ran fewer; equal to ``volume_seconds`` otherwise).
        extrapolated: whether ``volume_full_seconds`` is an extrapolation.
        volume_peak_bytes: the largest stage peak.
        volume_reserved_bytes: CUDA allocator's reserved peak over the batch (None on the CPU).
        load_seconds: loading the networks and the text encoder (once per run, not per volume).
    """

    preset: str
    weights: str
    mode: str
    batch: int
    repeats: int
    warmup: bool
    label_shape: list[int]
    ct_shape: list[int]
    stages: dict[str, StagePerf]
    volume_seconds: float
    volume_full_seconds: float
    extrapolated: bool
    volume_peak_bytes: int | None
    volume_reserved_bytes: int | None
    load_seconds: float


@dataclass
class GuideGenPerf:
    """A ``bench perf guidegen`` run: the device, how memory was measured, each preset."""

    device: str
    threads: int
    memory: str
    run: str
    presets: list[PresetPerf] = field(default_factory=list)

    def references(self) -> list[dict[str, Any]]:
        """The paper preset against the paper's memory and MAISI's time (CUDA only)."""
        paper = next((p for p in self.presets if p.preset == "paper"), None)
        cuda = self.device.startswith("cuda")
        mem: dict[str, Any] = {
            "what": f"paper preset inference memory vs the paper's {PAPER_MEMORY_GB} GB",
            "reference": PAPER_MEMORY_GB * 1e9,
        }
        tim: dict[str, Any] = {
            "what": f"paper preset seconds per volume vs MAISI's {MAISI_SECONDS:g} s ({MAISI_CASE})",
            "reference": MAISI_SECONDS,
        }
        if not cuda or paper is None:
            why = "needs CUDA" if not cuda else "paper preset not measured"
            return [{**mem, "status": why}, {**tim, "status": why}]
        peak = paper.volume_peak_bytes or 0
        ct = paper.stages["generator"].full_seconds + paper.stages["decode"].full_seconds
        return [
            {
                **mem,
                "status": "measured",
                "measured": peak,
                "reserved": paper.volume_reserved_bytes,
                "ratio": peak / (PAPER_MEMORY_GB * 1e9),
            },
            {
                **tim,
                "status": "extrapolated" if paper.extrapolated else "measured",
                "measured": paper.volume_full_seconds,
                "ratio": paper.volume_full_seconds / MAISI_SECONDS,
                "ct_stages_seconds": ct / paper.batch,
                "ct_stages_ratio": ct / paper.batch / MAISI_SECONDS,
                "note": f"GuideGen paper preset: {paper.ct_shape[-1]}^3 CT, "
                f"{paper.stages['generator'].full_steps} DDIM steps, plus the label map",
            },
        ]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for p, pd in zip(self.presets, d["presets"], strict=True):
            for k, s in p.stages.items():
                pd["stages"][k]["seconds_per_call"] = s.seconds_per_call
                pd["stages"][k]["full_seconds"] = s.full_seconds
        d["references"] = self.references()
        return d


class _Meter:
    """Peak memory of one stage (module docstring): ``start()`` before it, ``stop()`` after."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.base = 0
        self.reserved = 0  # CUDA: the largest reserved peak seen by stop()
        if device.type == "cuda":
            self.kind = "cuda max_memory_allocated (reset before each stage; weights included)"
            self.per_stage = True
        elif _reset_peak_rss():
            self.kind = (
                "CPU resident set of this process, peak mark reset before each stage "
                "(weights, text encoder and interpreter included)"
            )
            self.per_stage = True
        else:
            self.kind = "CPU ru_maxrss: this process's peak since it started (not per stage)"
            self.per_stage = False

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return
        gc.collect()
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        if self.per_stage:
            _reset_peak_rss()
            self.base = _status_bytes("VmRSS")

    def stop(self) -> tuple[int, int | None]:
        """``(peak bytes, growth bytes or None)``."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            self.reserved = max(self.reserved, torch.cuda.max_memory_reserved(self.device))
            return peak, peak - self.base
        if self.per_stage:
            peak = _status_bytes("VmHWM")
            return peak, max(peak - self.base, 0)
        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return _status_bytes("VmHWM") > 0
    except OSError:
        return False


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def check_options(
    presets: Sequence[str],
    *,
    device: str = "cpu",
    repeats: int = 1,
    batch: int = 1,
    tcss_steps: int | None = None,
    gen_steps: int | None = None,
) -> None:
    """Refuse bad options in one line that names the input and what is allowed."""
    if not presets:
        raise BenchError(f"--presets: give one or more of {', '.join(PRESETS)}")
    bad = [p for p in presets if p not in PRESETS]
    if bad:
        raise BenchError(
            f"--presets: unknown preset {bad[0]!r}; allowed: {', '.join(PRESETS)} (comma list)"
        )
    for name, v in (("--repeats", repeats), ("--batch", batch)):
        if v < 1:
            raise BenchError(f"{name} must be >= 1, got {v}")
    for name, v in (("--tcss-steps", tcss_steps), ("--gen-steps", gen_steps)):
        if v is not None and v < 1:
            raise BenchError(f"{name} must be >= 1 (or left out for the preset's), got {v}")
    try:
        dev = torch.device(device)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise BenchError(f"--device {device!r}: allowed are cpu and cuda[:N]")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BenchError(f"--device {device}: CUDA is not available here; allowed: cpu")


def _random_system(preset: GuideGenPreset, text_encoder: str) -> GuideGenSystem:
    """The preset's networks with random weights (seeded, the caller's RNG left as it was)."""
    from cat_diffusion import SemanticSynthesizer

    from .stages import make_autoencoder, make_generator

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return GuideGenSystem(
            preset=preset,
            tcss=SemanticSynthesizer(config=preset.tcss).eval(),
            autoencoder=make_autoencoder(preset).eval(),
            generator=make_generator(preset).eval(),
            text_encoder=text_encoder,
            path=Path("random weights"),
            info={},
        )


class _CallCounter:
    """Counts a module's forward calls (a pre-hook)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.calls = 0
        self._h = module.register_forward_pre_hook(self._pre)

    def _pre(self, *_: Any) -> None:
        self.calls += 1

    def remove(self) -> None:
        self._h.remove()


@torch.no_grad()
def _decode_one_tile(system: GuideGenSystem, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The first decoder tile of the CT, repeated to the CT's size (stand-in for writing)."""
    from .stages import labels_to_ct_grid

    p = system.preset
    t = p.decode_tile
    f = p.ct_size // p.latent_size
    ae = system.autoencoder
    lab = labels_to_ct_grid(labels.to(z.device), p.ct_size)[..., :t, :t, :t]
    x = ae.decode_stage_2_outputs(z[..., : t // f, : t // f, : t // f] / ae.scale_factor, lab)
    tile = ae.denormalize(x)[:, 0].clamp(-1024, 3071).cpu()
    reps = -(-p.ct_size // t)
    return tile.repeat(1, reps, reps, reps)[..., : p.ct_size, : p.ct_size, : p.ct_size]


def _measure_preset(
    system: GuideGenSystem,
    *,
    weights: str,
    device: torch.device,
    meter: _Meter,
    batch: int,
    repeats: int,
    tcss_steps: int | None,
    gen_steps: int | None,
    one_call: bool,
    out: Path,
    progress: bool,
) -> PresetPerf:
    from ct_autoencoder import tile_starts

    from ..text import load_text_encoder
    from .prompts import parse_prompt

    p = system.preset
    t0 = time.perf_counter()
    system.to(device)
    encoder = load_text_encoder(system.text_encoder, use_cache=False)  # time the encoder itself
    load_s = time.perf_counter() - t0
    counts = [parse_prompt(PROMPT).count] * batch
    full = {
        "prompt": 1,
        "tcss": p.tcss.fast_steps,
        "generator": p.gen_steps,
        "decode": len(tile_starts(p.ct_size, p.decode_tile, p.decode_overlap)) ** 3
        if p.decode_tile and p.ct_size > p.decode_tile
        else 1,
        "write": 1,
    }
    if one_call:
        tcss_steps, gen_steps = tcss_steps or 1, gen_steps or 1
    steps = {
        "prompt": 1,
        "tcss": tcss_steps or p.tcss.fast_steps,
        "generator": gen_steps or p.gen_steps,
        "decode": 1 if one_call else full["decode"],
        "write": 1,
    }
    label_aff, ct_aff = affines(p)
    unet_calls = _CallCounter(system.generator.unet)

    def one_batch(seed: int, s: dict[str, int], record: bool) -> dict[str, tuple]:
        # On CUDA no generator is passed: the samplers then draw on the device, as
        # scripts/paper_memory.py ran them on a GPU; on the CPU draws are seeded.
        g = torch.Generator().manual_seed(seed) if device.type == "cpu" else None
        rows: dict[str, tuple] = {}

        def stage(name: str, fn: Callable[[], Any]) -> Any:
            meter.start()
            unet_calls.calls = 0
            t = time.perf_counter()
            res = fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            sec = time.perf_counter() - t
            peak, growth = meter.stop()
            rows[name] = (sec, peak, growth)
            if record and progress:
                log.info("perf %s: %s %.3f s", p.name, name, sec)
            return res

        tokens, mask = stage("prompt", lambda: encode(system, [PROMPT] * batch, batch, encoder))
        labels, calls = stage(
            "tcss",
            lambda: sample_labels(
                system, tokens, mask, steps=s["tcss"], generator=g, counts=counts
            ),
        )
        rows["tcss"] += (calls,)
        z = stage(
            "generator",
            lambda: sample_latents(system, labels, tokens, steps=s["generator"], generator=g),
        )
        rows["generator"] += (unet_calls.calls,)
        ct = stage(
            "decode",
            lambda: (
                _decode_one_tile(system, z, labels)
                if one_call
                else decode_latents(system, z, labels)
            ),
        )
        rows["decode"] += (s["decode"],)
        lab_np, ct_np = labels[:, 0].cpu().numpy(), ct.numpy()
        stage(
            "write",
            lambda: [
                write_volumes(out, f"perf_{b:03d}", lab_np[b], ct_np[b], label_aff, ct_aff)
                for b in range(batch)
            ],
        )
        rows["prompt"] += (1,)  # one encoder call for the batch
        rows["write"] += (2 * batch,)
        return rows

    try:
        if not one_call:  # one-time costs (kernel selection, lazy imports) stay out of the timing
            one_batch(0, {**steps, "tcss": 1, "generator": 1}, record=False)
        meter.reserved = 0
        runs = [one_batch(r, steps, record=True) for r in range(repeats)]
        reserved = int(meter.reserved) if device.type == "cuda" else None
    finally:
        unet_calls.remove()
    stages: dict[str, StagePerf] = {}
    for k in STAGES:
        peaks = [r[k][1] for r in runs]
        growths = [r[k][2] for r in runs]
        stages[k] = StagePerf(
            seconds=statistics.median(r[k][0] for r in runs),
            steps=steps[k],
            full_steps=full[k],
            calls=int(runs[-1][k][3]),
            peak_bytes=int(max(peaks)),
            growth_bytes=None if growths[0] is None else int(max(growths)),
        )
    vol = sum(s.seconds for s in stages.values()) / batch
    vol_full = sum(s.full_seconds for s in stages.values()) / batch
    return PresetPerf(
        preset=p.name,
        weights=weights,
        mode="one call per stage" if one_call else "full",
        batch=batch,
        repeats=repeats,
        warmup=not one_call,
        label_shape=list(p.tcss.spatial_size),
        ct_shape=[p.ct_size] * 3,
        stages=stages,
        volume_seconds=vol,
        volume_full_seconds=vol_full,
        extrapolated=any(s.steps != s.full_steps for s in stages.values()),
        volume_peak_bytes=max(s.peak_bytes for s in stages.values() if s.peak_bytes is not None),
        volume_reserved_bytes=reserved,
        load_seconds=load_s,
    )


def run_perf(
    run: str | Path | None = None,
    *,
    presets: Sequence[str] = ("demo",),
    device: str = "cpu",
    batch: int = 1,
    repeats: int = 1,
    tcss_steps: int | None = None,
    gen_steps: int | None = None,
    progress: bool = False,
) -> GuideGenPerf:
    """Measure each preset (module docstring).

    Args:
        run: run folder (None: the shipped demo system); its preset uses its weights.
        presets: preset names; others than the run's get random weights.
        device: ``cpu`` or ``cuda[:N]``.
        batch: volumes per batch (seconds per volume = batch seconds / batch).
        repeats: timed batches per preset (median seconds, largest peak).
        tcss_steps, gen_steps: fast TCSS steps and DDIM steps (default: the preset's; 1 for the
            paper preset on the CPU).
        progress: log each stage.

    Raises:
        BenchError: bad options, or a run folder that is not a GuideGen run with CT stages.
    """
    check_options(
        presets,
        device=device,
        repeats=repeats,
        batch=batch,
        tcss_steps=tcss_steps,
        gen_steps=gen_steps,
    )
    dev = torch.device(device)
    trained = load_system(run)
    if not trained.has_ct:
        raise BenchError(
            f"{trained.path}: no CT stages (autoencoder/, generator/); perf needs the whole system"
        )
    meter = _Meter(dev)
    result = GuideGenPerf(
        device=str(dev),
        threads=torch.get_num_threads(),
        memory=meter.kind,
        run="shipped demo" if run is None else str(run),
    )
    for name in presets:
        if name == trained.preset.name:
            system, weights = trained, f"trained ({result.run})"
        else:
            system, weights = _random_system(PRESETS[name], trained.text_encoder), "random"
        with tempfile.TemporaryDirectory(prefix="gg-perf-") as tmp:
            result.presets.append(
                _measure_preset(
                    system,
                    weights=weights,
                    device=dev,
                    meter=meter,
                    batch=batch,
                    repeats=repeats,
                    tcss_steps=tcss_steps,
                    gen_steps=gen_steps,
                    one_call=name == "paper" and dev.type == "cpu",
                    out=Path(tmp),
                    progress=progress,
                )
            )
        if system is not trained:
            del system
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return result


def format_table(r: GuideGenPerf) -> str:
    """The result as plain text (what ``bench perf guidegen`` prints)."""
    mib = 1024 * 1024

    def mem(v: int | None) -> str:
        return "-" if v is None else f"{v / mib:.0f}"

    lines = [
        f"GuideGen perf on {r.device} ({r.threads} torch threads), system: {r.run}",
        f"memory: {r.memory}",
    ]
    for p in r.presets:
        how = (
            "ONE network call per stage, per-volume time EXTRAPOLATED"
            if p.mode != "full"
            else f"median of {p.repeats} after a warm-up"
        )
        lines += [
            "",
            f"preset {p.preset}: {p.weights} weights, label map {'x'.join(map(str, p.label_shape))}, "
            f"CT {'x'.join(map(str, p.ct_shape))}, batch {p.batch}, {how}",
            f"{'stage':<12}{'steps':>7}{'calls':>7}{'seconds':>10}{'s/call':>9}{'peak MiB':>10}{'growth MiB':>12}",
        ]
        for k, s in p.stages.items():
            steps = f"{s.steps}" if s.steps == s.full_steps else f"{s.steps}/{s.full_steps}"
            lines.append(
                f"{k:<12}{steps:>7}{s.calls:>7}{s.seconds:>10.3f}{s.seconds_per_call:>9.3f}"
                f"{mem(s.peak_bytes):>10}{mem(s.growth_bytes):>12}"
            )
        lines.append(
            f"{'per volume':<12}{'':>7}{'':>7}{p.volume_seconds:>10.3f}{'':>9}{mem(p.volume_peak_bytes):>10}"
        )
        if p.extrapolated:
            lines.append(
                f"at the preset's steps and tiles ({p.stages['tcss'].full_steps} TCSS, "
                f"{p.stages['generator'].full_steps} DDIM, {p.stages['decode'].full_steps} tiles): "
                f"{p.volume_full_seconds:.1f} s per volume, EXTRAPOLATED from seconds per step "
                f"(steps column: run/preset)"
            )
        if p.volume_reserved_bytes is not None:
            lines.append(f"CUDA allocator's reserved peak: {p.volume_reserved_bytes / mib:.0f} MiB")
        lines.append(f"loading networks + text encoder (once per run): {p.load_seconds:.2f} s")
    lines += ["", "references (paper preset):"]
    for ref in r.references():
        if ref["status"] in ("measured", "extrapolated"):
            if "reserved" in ref:
                val = (
                    f"{ref['measured'] / 1e9:.2f} GB allocated peak ({ref['ratio']:.2f}x); "
                    f"reserved {(ref['reserved'] or 0) / 1e9:.2f} GB"
                )
            else:
                val = (
                    f"{ref['measured']:.1f} s ({ref['ratio']:.1f}x, {ref['status']}); CT stages "
                    f"{ref['ct_stages_seconds']:.1f} s ({ref['ct_stages_ratio']:.1f}x); {ref['note']}"
                )
        else:
            val = ref["status"]
        lines.append(f"  {ref['what']}: {val}")
    return "\n".join(lines)
