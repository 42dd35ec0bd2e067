"""The training loop shared by every stage of both systems.

:func:`train` takes a model, a loss callable and a map-style dataset. The loss is called as
``loss_fn(model, batch, generator) -> (loss, logs)`` with the possibly DDP-wrapped model (call it
only through ``model(...)`` so DDP's gradient sync works), a collated batch on the training
device and this rank's :class:`torch.Generator` (on the training device; seeded from
``config.seed`` and the rank); ``loss`` is a scalar tensor that is a *mean over the batch*, and
``logs`` maps names to floats that are written to ``metrics.jsonl``.

Batch sizes are global: ``config.batch_size`` samples make one optimiser step, split over
``K`` processes and ``config.grad_accum`` micro-steps, so each forward sees
``batch_size / (K * grad_accum)`` samples, and one process with batch ``B`` takes the same
steps as ``K`` processes with ``B / K`` each (up to the rank-dependent random draws of the loss).

With an :class:`Adversary` (a GAN's discriminators) each step is one update of the model, then
one of the adversary, each with its own AdamW; see :class:`Adversary` for the two losses.

Resume is exact on the CPU (bit-identical weights to an uninterrupted run) when the dataset is
deterministic per index or draws from torch's global CPU generator with ``num_workers=0`` (its
state is saved and restored), and the loss draws only from the generator it is given.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate

from . import _atomic, _run, _state
from ._dist import DistInfo, ShardedBatches, init_distributed
from ._ema import EMA
from ._errors import RunFolderError, TrainConfigError, TrainingError

logger = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, Any, torch.Generator], tuple[torch.Tensor, Mapping[str, float]]]
AdversaryLossFn = Callable[
    [nn.Module, Any, Any, torch.Generator, int], tuple[torch.Tensor | None, Mapping[str, float]]
]

#: Settings that must not change when a run is resumed (they change the trajectory).
_RESUME_KEYS = (
    "batch_size",
    "grad_accum",
    "lr",
    "betas",
    "weight_decay",
    "ema_decay",
    "grad_clip",
    "seed",
    "shuffle",
    "precision",
)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Settings of one training stage.

    Attributes:
        max_steps: Stop after this many optimiser steps (counted over resumes).
        minutes: Stop after this many minutes of this call (wall clock); with ``max_steps``,
            whichever comes first. At least one budget is required.
        batch_size: Global samples per optimiser step (all processes, all micro-steps).
        grad_accum: Micro-steps per optimiser step (gradient accumulation).
        lr: AdamW learning rate (LesionDiffusion 1e-4, GuideGen 2e-5).
        warmup_steps: Raise the learning rate linearly from ``lr / warmup_steps`` to ``lr`` over
            this many steps (0: constant ``lr``).
        betas: AdamW betas.
        weight_decay: AdamW decoupled weight decay.
        ema_decay: EMA decay in ``[0, 1)``; ``None`` turns EMA off.
        grad_clip: Clip the global gradient norm to this value; ``None`` turns clipping off.
        checkpoint_every: Save a checkpoint every this many steps (and always at the end).
        log_every: Append to ``metrics.jsonl`` every this many steps (and at the end).
        seed: Seed of the data order and of the loss generators.
        shuffle: Shuffle the data each epoch.
        num_workers: DataLoader worker processes (0 loads in the training process).
        precision: ``"auto"``: bf16 autocast on CUDA, fp32 elsewhere; ``"bf16"``: bf16 autocast
            on CUDA (an error elsewhere); ``"fp32"``: no autocast.
        threads: torch CPU threads; ``None`` chooses (1 on machines with at most 2 cores, else
            cores / processes per node), unless ``OMP_NUM_THREADS`` is set.
        find_unused_parameters: Passed to DDP, for models whose forward skips parameters.
    """

    max_steps: int | None = None
    minutes: float | None = None
    batch_size: int = 2
    grad_accum: int = 1
    lr: float = 1e-4
    warmup_steps: int = 0
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 1e-5
    ema_decay: float | None = None
    grad_clip: float | None = 1.0
    checkpoint_every: int = 500
    log_every: int = 10
    seed: int = 0
    shuffle: bool = True
    num_workers: int = 0
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    threads: int | None = None
    find_unused_parameters: bool = False

    def __post_init__(self) -> None:
        if self.max_steps is None and self.minutes is None:
            raise TrainConfigError("give a budget: max_steps and/or minutes")
        positive_ints = ("batch_size", "grad_accum", "checkpoint_every", "log_every")
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise TrainConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.max_steps is not None and (
            not isinstance(self.max_steps, int) or self.max_steps < 1
        ):
            raise TrainConfigError(f"max_steps must be a positive integer, got {self.max_steps!r}")
        if self.minutes is not None and not self.minutes > 0:
            raise TrainConfigError(f"minutes must be > 0, got {self.minutes!r}")
        if self.batch_size % self.grad_accum:
            raise TrainConfigError(
                f"batch_size {self.batch_size} is not divisible by grad_accum {self.grad_accum}"
            )
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise TrainConfigError(
                f"warmup_steps must be an integer >= 0, got {self.warmup_steps!r}"
            )
        if not self.lr > 0:
            raise TrainConfigError(f"lr must be > 0, got {self.lr!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise TrainConfigError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        if self.ema_decay is not None and not 0 <= self.ema_decay < 1:
            raise TrainConfigError(f"ema_decay must be in [0, 1) or None, got {self.ema_decay!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise TrainConfigError(f"grad_clip must be > 0 or None, got {self.grad_clip!r}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise TrainConfigError(
                f"precision must be 'auto', 'bf16' or 'fp32', got {self.precision!r}"
            )
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise TrainConfigError(f"threads must be a positive integer or None: {self.threads!r}")
        if self.num_workers < 0:
            raise TrainConfigError(f"num_workers must be >= 0, got {self.num_workers!r}")


@dataclass(frozen=True)
class Adversary:
    """A network that trains against the stage's model (a GAN's discriminators).

    With an adversary, :func:`train` calls the model's loss as ``loss_fn(model, batch, generator,
    adversary, step) -> (loss, logs, output)``, where ``adversary`` is the (possibly
    DDP-wrapped) adversary for the model's adversarial terms and ``step`` counts the optimiser
    steps done before this one. After the model's update it calls ``adversary.loss_fn(adversary,
    batch, output, generator, step) -> (loss or None, logs)`` and updates the adversary with its
    own AdamW (the config's lr, warm-up, betas, weight decay and clipping); a ``None`` loss skips
    the update (e.g. before the adversarial terms start). The adversary's weights and optimiser
    are part of the trainer state, so resume stays exact, and each checkpoint also saves it to
    ``RUN/<stage>/<name>/`` (like the model: ``save_fn``, ``config_dict()`` or ``save()``).

    Attributes:
        model: The adversary (unwrapped).
        loss_fn: Its loss, as above; ``output`` is what the model's loss returned third.
        name: Its folder in the stage folder (letters, digits, ``_`` and ``-``).
        save_fn: Writes its weights and config into a folder.
    """

    model: nn.Module
    loss_fn: AdversaryLossFn
    name: str = "adversary"
    save_fn: _state.SaveFn | None = None


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` did.

    Attributes:
        stage_dir: ``RUN/<stage>``.
        step: Optimiser steps done in total (over resumes).
        seconds: Training seconds in total (over resumes).
        loss: Mean loss of the last logged interval on rank 0 (NaN if no step was taken).
        stopped_by: ``"max_steps"`` or ``"minutes"``.
        resumed_from: Step the call resumed from (0 for a fresh start).
    """

    stage_dir: Path
    step: int
    seconds: float
    loss: float
    stopped_by: Literal["max_steps", "minutes"]
    resumed_from: int


def cpu_threads_for(cores: int, procs_per_node: int = 1) -> int:
    """The default torch thread count: 1 with at most 2 cores, else cores per process."""
    if cores <= 2:
        return 1
    return max(1, cores // max(1, procs_per_node))


def _configure_threads(config: TrainConfig, device: torch.device, info: DistInfo) -> None:
    if config.threads is not None:
        torch.set_num_threads(config.threads)
        return
    if device.type != "cpu" or os.environ.get("OMP_NUM_THREADS"):
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    want = cpu_threads_for(cores or 1, info.local_world_size)
    if torch.get_num_threads() != want:
        logger.info("using %d torch CPU thread(s) on %d core(s)", want, cores)
        torch.set_num_threads(want)


def _hash_text(text: str) -> int:
    """A stable 63-bit integer from ``text`` (Python's ``hash`` is salted per process)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def _rank_seed(seed: int, rank: int) -> int:
    digest = hashlib.sha256(f"ctsynth-train:{seed}:{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(_to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _batch_stream(
    dataset: Dataset,
    sampler: ShardedBatches,
    *,
    collate_fn: Callable[[list[Any]], Any],
    num_workers: int,
    pin_memory: bool,
) -> Iterator[Any]:
    """Batches forever; the sampler's position counts the batches handed out."""
    while True:
        index_lists = sampler.remaining()
        # A private generator for the loader's worker seeds, derived from the position, so
        # creating a loader (at each epoch and on resume) never draws from the global RNG.
        where = f"{sampler.seed}:{sampler.rank}:{sampler.epoch}:{sampler.batch}"
        loader = DataLoader(
            dataset,
            batch_sampler=index_lists,
            num_workers=num_workers,
            collate_fn=collate_fn,
            pin_memory=pin_memory,
            generator=torch.Generator().manual_seed(_rank_seed(0, _hash_text(where))),
        )
        for batch in loader:
            sampler.advance()
            yield batch


def _gather_cpu(tensor: torch.Tensor, info: DistInfo, comm: torch.device) -> list[torch.Tensor]:
    """``tensor`` of every rank (same shape everywhere), on the CPU, rank order."""
    if not info.distributed:
        return [tensor.cpu()]
    local = tensor.to(comm)
    out = [torch.empty_like(local) for _ in range(info.world_size)]
    dist.all_gather(out, local)
    return [t.cpu() for t in out]


def _settings(config: TrainConfig, world_size: int) -> dict[str, Any]:
    raw = asdict(config)
    out = {k: (list(raw[k]) if isinstance(raw[k], tuple) else raw[k]) for k in _RESUME_KEYS}
    out["world_size"] = world_size
    if config.warmup_steps:  # only when used, so runs saved before the field existed resume
        out["warmup_steps"] = config.warmup_steps
    return out


def train(
    model: nn.Module,
    loss_fn: LossFn,
    dataset: Dataset,
    *,
    run_dir: str | os.PathLike[str],
    stage: str,
    config: TrainConfig,
    save_fn: _state.SaveFn | None = None,
    resume: bool = False,
    device: torch.device | str | None = None,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    progress: bool = True,
    adversary: Adversary | None = None,
) -> TrainResult:
    """Train ``model`` for one stage and write ``RUN/<stage>/``.

    Under ``torchrun --nproc-per-node K`` the same call joins the process group (gloo on the
    CPU, nccl on CUDA), wraps the model in DDP, shards the data by rank, and lets only rank 0
    write files, log metrics and show progress.

    Args:
        model: The network (unwrapped). It is moved to ``device``, trained in place, and saved
            with ``save_fn(model, folder)``, or its ``config_dict()``, or its ``save(folder)``.
        loss_fn: ``loss_fn(model, batch, generator) -> (scalar loss, {name: float})``.
        dataset: Map-style dataset; ``dataset[i]`` items are collated with ``collate_fn``
            (default :func:`torch.utils.data.default_collate`).
        run_dir: The run folder; the stage writes ``run_dir/stage`` and updates
            ``run_dir/manifest.json`` (created minimal if :func:`start_run` was not called).
        stage: Stage name (letters, digits, ``_`` and ``-``), e.g. ``"lmnet"``.
        config: Budget, optimiser and checkpoint settings.
        save_fn: Writes ``model.safetensors`` + ``config.json`` of the model into a folder.
        resume: Continue from the stage's trainer state if there is one (exactly where it
            stopped); start fresh if there is none.
        device: Training device; ``None`` keeps the model's device, and under torchrun on CUDA
            picks ``cuda:LOCAL_RANK``.
        collate_fn: Turns a list of items into a batch.
        progress: Show a tqdm bar with loss and ETA (rank 0 only).
        adversary: A network trained against the model, one update after each of the model's
            (changes how ``loss_fn`` is called; see :class:`Adversary`). Needs ``grad_accum=1``.

    Returns:
        A :class:`TrainResult`.

    Raises:
        TrainConfigError: Bad settings, a model that cannot be saved, too little data, or a
            stage folder with a trainer state while ``resume`` is False.
        RunFolderError: A corrupt or foreign trainer state or manifest (names the file).
        TrainingError: The loss became NaN or infinite.
    """
    from tqdm.auto import tqdm

    if not isinstance(stage, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", stage):
        raise TrainConfigError(f"stage must be letters, digits, '_' or '-', got {stage!r}")
    if not isinstance(model, nn.Module):
        raise TrainConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TrainConfigError("loss_fn must be callable as loss_fn(model, batch, generator)")
    try:
        n = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        raise TrainConfigError(
            f"dataset must be a map-style torch Dataset with __len__, got {type(dataset).__name__}"
        ) from None
    _state.check_savable(model, save_fn)
    if adversary is not None:
        if not isinstance(adversary, Adversary) or not isinstance(adversary.model, nn.Module):
            raise TrainConfigError("adversary must be an Adversary(model=nn.Module, loss_fn=...)")
        if not callable(adversary.loss_fn):
            raise TrainConfigError(
                "adversary.loss_fn must be callable as loss_fn(adversary, batch, output, "
                "generator, step)"
            )
        if not re.fullmatch(r"[A-Za-z0-9_-]+", adversary.name):
            raise TrainConfigError(
                f"adversary.name must be letters, digits, '_' or '-', got {adversary.name!r}"
            )
        if config.grad_accum != 1:
            raise TrainConfigError(
                f"an adversary needs grad_accum=1 (one model update, then one adversary update "
                f"per batch), got grad_accum={config.grad_accum}"
            )
        _state.check_savable(adversary.model, adversary.save_fn)

    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if config.precision == "bf16" and device.type != "cuda":
        raise TrainConfigError(f"precision='bf16' needs a CUDA device, training is on {device}")
    info = init_distributed(device)
    _configure_threads(config, device, info)
    micro_global = config.batch_size // config.grad_accum
    if micro_global % info.world_size:
        raise TrainConfigError(
            f"batch_size {config.batch_size} / grad_accum {config.grad_accum} = {micro_global} "
            f"samples per micro-step cannot be split over {info.world_size} processes"
        )

    run_dir = Path(run_dir)
    stage_dir = run_dir / stage
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TrainConfigError(f"{type(model).__name__} has no trainable parameters")
    optimizer = torch.optim.AdamW(
        params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
    )
    ema = EMA(model, decay=config.ema_decay) if config.ema_decay is not None else None
    adv_params: list[nn.Parameter] = []
    adv_optimizer: torch.optim.Optimizer | None = None
    if adversary is not None:
        adversary.model.to(device)
        adv_params = [p for p in adversary.model.parameters() if p.requires_grad]
        if not adv_params:
            raise TrainConfigError(
                f"the adversary {type(adversary.model).__name__} has no trainable parameters"
            )
        adv_optimizer = torch.optim.AdamW(
            adv_params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
        )
    sampler = ShardedBatches(
        n=n,
        global_batch=micro_global,
        rank=info.rank,
        world_size=info.world_size,
        seed=config.seed,
        shuffle=config.shuffle,
    )
    generator = torch.Generator(device=device).manual_seed(_rank_seed(config.seed, info.rank))
    settings = _settings(config, info.world_size)
    if adversary is not None:  # only when used, so runs saved without one still resume
        settings["adversary"] = adversary.name

    step, seconds_before = 0, 0.0
    saved = _state.read_trainer_state(stage_dir)
    if saved is not None and not resume:
        raise TrainConfigError(
            f"{stage_dir / _state.STATE_FILE} holds a training state at step "
            f"{saved[0].get('step')}; pass resume=True to continue it, or use another run folder"
        )
    if saved is not None:
        meta, tensors = saved
        state_path = stage_dir / _state.STATE_FILE
        before = meta.get("settings", {})
        diffs = {  # a key on one side only (warm-up, an adversary) is a change too
            k: (before.get(k), settings.get(k))
            for k in sorted(set(settings) | set(before))
            if before.get(k) != settings.get(k)
        }
        if diffs:
            listed = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in diffs.items())
            raise TrainConfigError(f"cannot resume {state_path}: settings changed ({listed})")
        try:
            model.load_state_dict(
                {k[6:]: v for k, v in tensors.items() if k.startswith("model/")}, strict=True
            )
            if ema is not None:
                ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema/")})
            _state.optimizer_from_parts(optimizer, tensors, meta["optimizer"])
            if adversary is not None and adv_optimizer is not None:
                adversary.model.load_state_dict(
                    {k[10:]: v for k, v in tensors.items() if k.startswith("adversary/")},
                    strict=True,
                )
                _state.optimizer_from_parts(
                    adv_optimizer,
                    {k[4:]: v for k, v in tensors.items() if k.startswith("adv_optim/")},
                    meta["adversary_optimizer"],
                )
            generator.set_state(tensors[f"rng/generator/{info.rank}"])
            torch.set_rng_state(tensors[f"rng/torch_cpu/{info.rank}"])
        except (KeyError, RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RunFolderError(
                f"{stage_dir / meta['file']} does not fit this model/optimiser: {first}"
            ) from None
        sampler.load_state_dict(meta["sampler"])
        step = int(meta["step"])
        seconds_before = float(meta.get("elapsed_seconds", 0.0))
        if info.is_main:
            _run.truncate_metrics(stage_dir, step)
        logger.info("resuming stage %s from step %d (%s)", stage, step, state_path)
    resumed_from = step

    if info.is_main:
        stage_dir.mkdir(parents=True, exist_ok=True)
        for stale in stage_dir.glob(".*.tmp"):  # left by a killed run's atomic writes
            stale.unlink(missing_ok=True)
        if saved is None:
            (stage_dir / _run.METRICS).unlink(missing_ok=True)
        _run.update_stage(
            run_dir,
            stage,
            {
                "status": "training",
                "steps": step,
                "seconds": round(seconds_before, 3),
                "world_size": info.world_size,
                "batch_size": config.batch_size,
            },
        )

    wrapped: nn.Module = model
    if info.distributed:
        wrapped = nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=config.find_unused_parameters,
        )
    adv_wrapped: nn.Module | None = adversary.model if adversary is not None else None
    if info.distributed and adversary is not None:
        adv_wrapped = nn.parallel.DistributedDataParallel(
            adversary.model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=config.find_unused_parameters,
        )
    comm = device if device.type == "cuda" else torch.device("cpu")
    use_bf16 = device.type == "cuda" and config.precision in ("auto", "bf16")
    batches = _batch_stream(
        dataset,
        sampler,
        collate_fn=collate_fn or default_collate,
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
    )

    t0 = time.monotonic()
    last_loss = math.nan
    interval: dict[str, list[float]] = {}
    last_saved = step

    def elapsed() -> float:
        return seconds_before + time.monotonic() - t0

    def checkpoint() -> None:
        rng = {
            "generator": _gather_cpu(generator.get_state(), info, comm),
            "torch_cpu": _gather_cpu(torch.get_rng_state(), info, comm),
        }
        if not info.is_main:
            return
        tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
        if ema is not None:
            tensors.update({f"ema/{k}": v for k, v in ema.state_dict().items()})
        optim_tensors, optim_meta = _state.optimizer_to_parts(optimizer)
        tensors.update(optim_tensors)
        extra_meta: dict[str, Any] = {}
        if adversary is not None and adv_optimizer is not None:
            tensors.update({f"adversary/{k}": v for k, v in adversary.model.state_dict().items()})
            adv_tensors, extra_meta["adversary_optimizer"] = _state.optimizer_to_parts(
                adv_optimizer
            )
            tensors.update({f"adv_{k}": v for k, v in adv_tensors.items()})
        for kind, states in rng.items():
            tensors.update({f"rng/{kind}/{r}": s for r, s in enumerate(states)})
        _state.write_trainer_state(
            stage_dir,
            step=step,
            tensors=tensors,
            meta={
                "stage": stage,
                "sampler": sampler.state_dict(),
                "settings": settings,
                "optimizer": optim_meta,
                "elapsed_seconds": elapsed(),
                "world_size": info.world_size,
                **extra_meta,
            },
        )
        _state.save_model(model, stage_dir, save_fn)
        if adversary is not None:
            _state.save_model(adversary.model, stage_dir / adversary.name, adversary.save_fn)
        if ema is not None:
            _atomic.write_safetensors(stage_dir / _state.EMA_FILE, ema.state_dict())
        _run.plot_loss(stage_dir, title=stage)
        _run.update_stage(run_dir, stage, {"steps": step, "seconds": round(elapsed(), 3)})
        logger.info("stage %s: checkpoint at step %d in %s", stage, step, stage_dir)

    def budget_left() -> Literal["max_steps", "minutes"] | None:
        stop: Literal["max_steps", "minutes"] | None = None
        if config.max_steps is not None and step >= config.max_steps:
            stop = "max_steps"
        elif config.minutes is not None:
            over = time.monotonic() - t0 >= 60.0 * config.minutes
            if info.distributed:  # rank 0's clock decides for everyone
                flag = torch.tensor([1.0 if over else 0.0], device=comm)
                dist.broadcast(flag, src=0)
                over = bool(flag.item())
            stop = "minutes" if over else None
        return stop

    bar = tqdm(
        total=config.max_steps,
        initial=step,
        unit="step",
        desc=stage,
        disable=not (progress and info.is_main),
        dynamic_ncols=True,
    )
    model.train()
    if adversary is not None:
        adversary.model.train()
    stopped_by = budget_left()
    try:
        while stopped_by is None:
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for micro in range(config.grad_accum):
                batch = _to_device(next(batches), device)
                sync = (
                    wrapped.no_sync()
                    if info.distributed and micro < config.grad_accum - 1
                    else contextlib.nullcontext()
                )
                with sync:
                    autocast = (
                        torch.autocast("cuda", dtype=torch.bfloat16)
                        if use_bf16
                        else contextlib.nullcontext()
                    )
                    output = None
                    with autocast:
                        if adversary is None:
                            loss, logs = loss_fn(wrapped, batch, generator)
                        else:
                            got = loss_fn(wrapped, batch, generator, adv_wrapped, step)  # type: ignore[call-arg]
                            if not isinstance(got, tuple) or len(got) != 3:
                                raise TrainConfigError(
                                    "with an adversary, loss_fn must return (scalar tensor, "
                                    "dict of floats, output for the adversary's loss)"
                                )
                            loss, logs, output = got
                    if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
                        raise TrainConfigError(
                            "loss_fn must return (scalar tensor, dict of floats), got "
                            f"{type(loss).__name__} of shape {getattr(loss, 'shape', None)}"
                        )
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        raise TrainingError(
                            f"stage {stage}: the loss is {value} at step {step + 1} on rank "
                            f"{info.rank}; lower lr, enable grad_clip, or check the data"
                        )
                    (loss / config.grad_accum).backward()
                step_loss += value / config.grad_accum
                for key, v in (logs or {}).items():
                    interval.setdefault(key, []).append(float(v))
            record: dict[str, float] = {}
            if config.grad_clip is not None:
                norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                record["grad_norm"] = float(norm)
            if config.warmup_steps:
                for group in optimizer.param_groups:
                    group["lr"] = config.lr * min(1.0, (step + 1) / config.warmup_steps)
            optimizer.step()
            if adversary is not None and adv_optimizer is not None:
                adv_optimizer.zero_grad(set_to_none=True)  # drops the grads the model's loss left
                autocast = (
                    torch.autocast("cuda", dtype=torch.bfloat16)
                    if use_bf16
                    else contextlib.nullcontext()
                )
                with autocast:
                    adv_loss, adv_logs = adversary.loss_fn(
                        adv_wrapped, batch, output, generator, step
                    )
                del output
                if adv_loss is not None:
                    adv_value = float(adv_loss.detach())
                    if not math.isfinite(adv_value):
                        raise TrainingError(
                            f"stage {stage}: the adversary's loss is {adv_value} at step "
                            f"{step + 1} on rank {info.rank}; lower lr or check the data"
                        )
                    adv_loss.backward()
                    if config.grad_clip is not None:
                        torch.nn.utils.clip_grad_norm_(adv_params, config.grad_clip)
                    for group in adv_optimizer.param_groups:
                        group["lr"] = optimizer.param_groups[0]["lr"]
                    adv_optimizer.step()
                    interval.setdefault("adversary_loss", []).append(adv_value)
                for key, v in (adv_logs or {}).items():
                    interval.setdefault(key, []).append(float(v))
            if ema is not None:
                ema.update(model)
            step += 1
            interval.setdefault("loss", []).append(step_loss)
            for key, v in record.items():
                interval.setdefault(key, []).append(v)
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4g}", refresh=False)
            stopped_by = budget_left()
            if step % config.log_every == 0 or stopped_by is not None:
                means = {k: sum(v) / len(v) for k, v in interval.items()}
                last_loss = means["loss"]
                if info.is_main:
                    _run.append_metrics(
                        stage_dir,
                        {
                            "step": step,
                            "seconds": round(elapsed(), 3),
                            "lr": optimizer.param_groups[0]["lr"],
                            **means,
                        },
                    )
                interval.clear()
            if step % config.checkpoint_every == 0 or stopped_by is not None:
                checkpoint()
                last_saved = step
    finally:
        bar.close()
    if last_saved != step:  # e.g. resumed at the budget: nothing new, nothing to write
        checkpoint()
    total = elapsed() if step > resumed_from else seconds_before
    if info.is_main:
        _run.update_stage(
            run_dir, stage, {"status": "done", "steps": step, "seconds": round(total, 3)}
        )
    if info.distributed:
        dist.barrier()
    logger.info("stage %s: %d steps in %.1f s (stopped by %s)", stage, step, total, stopped_by)
    return TrainResult(
        stage_dir=stage_dir,
        step=step,
        seconds=total,
        loss=last_loss,
        stopped_by=stopped_by,
        resumed_from=resumed_from,
    )
