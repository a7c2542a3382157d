"""Data-parallel training with PyTorch's own engine: torch.distributed + DistributedDataParallel, launched by
`torchrun` (or `accelerate launch`, which sets the same variables), over Gloo.

hfcf trains on the CPU (its models are a few embedding tables and small layers), so the backend is Gloo also on
a machine with GPUs; NCCL would need the model and batches on CUDA, which hfcf does not do yet.

Without torchrun's variables (WORLD_SIZE unset or 1) nothing here starts a process group: one process trains
exactly as before. fastai's own `distrib_ctx` assumes CUDA and NCCL, so hfcf wraps the fastai Learner's model
itself (`training.DataParallel`) and shards each epoch's batches by rank (`TensorBatches`, `HistoryBatches`).

The batch size a user gives is the global batch: each of N ranks takes 1/N of every batch and DDP averages
their gradients, so one step sees the same ratings, and the same learning rate applies, whatever N is.
"""
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import DataError

BACKEND = "gloo"


@dataclass(frozen=True)
class World:
    """Where this process stands: its rank among `size` processes and the backend joining them."""

    rank: int = 0
    size: int = 1
    backend: str | None = None

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def distributed(self):
        return self.size > 1

    def describe(self):
        return f"rank {self.rank} of {self.size}" if self.distributed else "one process"


SINGLE = World()


def join(timeout_minutes=30):
    """The World of this process: a process group joined when torchrun launched several, else SINGLE."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return SINGLE
    asked = os.environ.get("HFCF_DIST_BACKEND", BACKEND)
    if asked != BACKEND:
        raise DataError(f"HFCF_DIST_BACKEND={asked}: hfcf trains on the CPU, where only {BACKEND} works (NCCL needs "
                        "CUDA tensors); unset it")
    if not dist.is_initialized():
        dist.init_process_group(BACKEND, timeout=timedelta(minutes=timeout_minutes))
    return World(dist.get_rank(), dist.get_world_size(), BACKEND)


def check_batch(world, kind, bs):
    """Refuse a global batch too small for every rank to take two rows of it."""
    if world.distributed and bs < 2 * world.size:
        raise DataError(f"{kind}: a batch of {bs} cannot give each of {world.size} processes two rows; "
                        f"raise --bs to at least {2 * world.size}")


def leave(world):
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def check_same(world, what, value):
    """Refuse to train when the ranks disagree on `value` (say, the vocabularies built from --data)."""
    if not world.distributed:
        return
    digest = hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
    digests = [None] * world.size
    dist.all_gather_object(digests, digest)
    differing = [rank for rank, other in enumerate(digests) if other != digests[0]]
    if differing:
        raise DataError(f"ranks {', '.join(map(str, differing))} built other {what} than rank 0: every rank must "
                        "read the same --data (the same file, on every machine) with the same flags")


def barrier(world):
    if world.distributed:
        dist.barrier()


def shard(rows, world):
    """This rank's part of one global batch: contiguous, sizes differing by at most one row across ranks."""
    if not world.distributed:
        return rows
    return torch.tensor_split(rows, world.size)[world.rank]
