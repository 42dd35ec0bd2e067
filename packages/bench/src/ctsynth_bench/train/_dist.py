"""Process groups and a deterministic, resumable, rank-sharded batch order.

Under ``torchrun --nproc-per-node K`` the environment holds ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_distributed` then joins the
process group (``nccl`` when training on CUDA, ``gloo`` on the CPU) once per process and leaves
it open for the next stage (it is closed at exit). Without those variables it is a no-op and
training runs in one process.

:class:`ShardedBatches` orders the data like :class:`torch.utils.data.DistributedSampler`, but
by *global batch*: epoch ``e`` is a permutation of ``range(n)`` drawn from ``seed + e``; global
batch ``k`` is ``perm[k * B : (k + 1) * B]`` (the last incomplete batch is dropped), and rank
``r`` of ``K`` takes its ``r``-th contiguous slice of ``B / K`` samples. So K processes with
``B / K`` samples each see exactly the samples one process sees with ``B``, and the position
(epoch, batch in epoch) is two integers that a checkpoint stores.
"""

from __future__ import annotations

import atexit
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ._errors import TrainConfigError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands among the training processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that writes files and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when more than one process trains."""
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise TrainConfigError(f"environment variable {name}={raw!r} is not an integer") from None


def dist_info() -> DistInfo:
    """Rank and world size of this process (from the process group, else from torchrun's env)."""
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    return DistInfo(
        rank=rank,
        world_size=world,
        local_rank=_env_int("LOCAL_RANK", 0),
        local_world_size=_env_int("LOCAL_WORLD_SIZE", world),
    )


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group if torchrun started several processes; else do nothing.

    Args:
        device: The training device; CUDA selects ``nccl``, anything else ``gloo``.

    Returns:
        This process's :class:`DistInfo`.
    """
    info = dist_info()
    if info.world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, init_method="env://")
        atexit.register(_shutdown)
        logger.info("joined %s process group as rank %d of %d", backend, info.rank, info.world_size)
    return dist_info()


def _shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class ShardedBatches:
    """Deterministic per-rank batches of a dataset of ``n`` samples, resumable by position.

    Args:
        n: Number of samples.
        global_batch: Samples per global batch ``B`` (all ranks together).
        rank: This process's rank.
        world_size: Number of processes ``K``; ``B`` must be divisible by ``K``.
        seed: Seed of the per-epoch permutations (``seed + epoch``).
        shuffle: False keeps the dataset order.

    Attributes:
        epoch: Current epoch.
        batch: Index of the next global batch within the epoch.
    """

    def __init__(
        self,
        *,
        n: int,
        global_batch: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        if global_batch % world_size:
            raise TrainConfigError(
                f"the global batch size {global_batch} is not divisible by the {world_size} "
                "training processes; choose a multiple of the process count"
            )
        if n < global_batch:
            raise TrainConfigError(
                f"the dataset has {n} samples, fewer than one global batch of {global_batch}; "
                "use a smaller batch_size or more data"
            )
        self.n, self.global_batch = n, global_batch
        self.rank, self.world_size = rank, world_size
        self.seed, self.shuffle = seed, shuffle
        self.per_rank = global_batch // world_size
        self.batches_per_epoch = n // global_batch
        self.epoch = 0
        self.batch = 0
        self._perm: list[int] | None = None

    def _permutation(self) -> list[int]:
        if self._perm is None:
            if self.shuffle:
                gen = torch.Generator().manual_seed(self.seed + self.epoch)
                self._perm = torch.randperm(self.n, generator=gen).tolist()
            else:
                self._perm = list(range(self.n))
        return self._perm

    def _rank_slice(self, k: int) -> list[int]:
        start = k * self.global_batch + self.rank * self.per_rank
        return self._permutation()[start : start + self.per_rank]

    def remaining(self) -> list[list[int]]:
        """This rank's index lists for the rest of the epoch, from the current position.

        Starts the next epoch first when the current one is used up. Does not advance the
        position: call :meth:`advance` once per batch actually consumed.
        """
        if self.batch >= self.batches_per_epoch:
            self.epoch += 1
            self.batch = 0
            self._perm = None
        return [self._rank_slice(k) for k in range(self.batch, self.batches_per_epoch)]

    def advance(self) -> None:
        """Record that one more batch of the current epoch was consumed."""
        self.batch += 1

    def state_dict(self) -> dict[str, int]:
        """The position: ``{"epoch", "batch"}`` (and the settings it depends on)."""
        return {
            "epoch": self.epoch,
            "batch": self.batch,
            "n": self.n,
            "global_batch": self.global_batch,
            "seed": self.seed,
            "shuffle": int(self.shuffle),
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a position saved by :meth:`state_dict` (same data and settings)."""
        mine = self.state_dict()
        for key in ("n", "global_batch", "seed", "shuffle"):
            if int(state.get(key, -1)) != mine[key]:
                raise TrainConfigError(
                    f"cannot resume the data order: saved {key}={state.get(key)!r}, now "
                    f"{mine[key]!r}; resume with the same data and batch settings"
                )
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        self._perm = None
