"""Where training runs: one device (CPU, a CUDA GPU or Apple's MPS), and data-parallel processes launched by
`torchrun` (or `accelerate launch`, which sets the same variables) joined by torch.distributed.

`--device auto` takes CUDA when there is a GPU, as fastai does. Under torchrun on CUDA each rank takes the GPU of
its LOCAL_RANK and the backend is NCCL; on the CPU it is Gloo. HFCF_DIST_BACKEND overrides the backend, refused only
where it cannot work (NCCL without CUDA).

Without torchrun's variables (WORLD_SIZE unset or 1) nothing here starts a process group: one process trains
exactly as before. fastai's own `distrib_ctx` assumes CUDA and NCCL, so hfcf wraps the fastai Learner's model
itself (`training.DataParallel`) and shards each epoch's batches by rank (`TensorBatches`, `HistoryBatches`).

The batch size a user gives is the global batch: each of N ranks takes 1/N of every batch and the ranks' gradients
are averaged, so one step sees the same ratings, and the same learning rate applies, whatever N is. Dense
parameters are averaged by DDP's all-reduce; a sparse embedding gradient (lazy Adam's) travels as the rows each rank
looked up and their gradients (`gather_sparse`), so what a step exchanges follows the batch, not the tables.
"""
import hashlib
import json
import os
import re
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import DataError

BACKENDS = {"cpu": "gloo", "cuda": "nccl"}  # the backend each device type gets unless HFCF_DIST_BACKEND says


@dataclass(frozen=True)
class World:
    """Where this process stands: its rank among `size` processes, the backend joining them, its torch device."""

    rank: int = 0
    size: int = 1
    backend: str | None = None
    device: str = "cpu"

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def distributed(self):
        return self.size > 1

    def describe(self):
        return f"rank {self.rank} of {self.size}" if self.distributed else "one process"


SINGLE = World()


def cuda_count():
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def mps_available():
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def found():
    """What this machine offers torch, in words, for a refusal."""
    build = f"torch {torch.__version__}" + (", a CPU-only build" if torch.version.cuda is None else "")
    parts = [f"{cuda_count()} CUDA device(s)" if cuda_count() else f"no CUDA device: {build}"]
    if mps_available():
        parts.append("MPS")
    return ", ".join(parts)


def resolve_device(asked="auto", local_rank=None):
    """The torch device string for `--device` (auto, cpu, cuda, cuda:N, mps); under torchrun, plain cuda (or auto)
    is the GPU of this process's `local_rank`. Refuses a device this machine does not have."""
    asked = (asked or "auto").strip().lower()
    if asked == "auto":
        asked = "cuda" if cuda_count() else "cpu"
    if asked == "cpu":
        return "cpu"
    if asked == "mps":
        if not mps_available():
            raise DataError(f"--device mps: this machine has no MPS device (found {found()}); use --device cpu")
        return "mps"
    match = re.fullmatch(r"cuda(?::(\d+))?", asked)
    if not match:
        raise DataError(f"--device {asked}: expected auto, cpu, cuda, cuda:N or mps")
    if not cuda_count():
        raise DataError(f"--device {asked}: no CUDA device here (found {found()}); use --device cpu")
    if match.group(1) is not None and local_rank is not None:
        raise DataError(f"--device {asked}: under torchrun each process takes the GPU of its LOCAL_RANK; "
                        "pass --device cuda (or auto)")
    index = int(match.group(1)) if match.group(1) is not None else (local_rank or 0)
    if index >= cuda_count():
        raise DataError(f"--device cuda:{index}: this machine has {cuda_count()} CUDA device(s), numbered from 0")
    return f"cuda:{index}"


def join(device="auto", timeout_minutes=30):
    """The World of this process: its device, and a process group joined when torchrun launched several."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    chosen = resolve_device(device, int(os.environ.get("LOCAL_RANK", "0")) if size > 1 else None)
    if size <= 1:
        return SINGLE if chosen == "cpu" else World(device=chosen)
    kind = chosen.split(":")[0]
    backend = os.environ.get("HFCF_DIST_BACKEND", BACKENDS.get(kind, "gloo")).strip().lower()
    if backend == "nccl" and kind != "cuda":
        raise DataError(f"HFCF_DIST_BACKEND=nccl: NCCL joins CUDA devices, and this run trains on {chosen} "
                        f"(found {found()}); unset it (Gloo), or train on CUDA")
    if backend not in ("gloo", "nccl"):
        raise DataError(f"HFCF_DIST_BACKEND={backend}: hfcf runs on gloo or nccl")
    if kind == "cuda":
        torch.cuda.set_device(chosen)  # NCCL's collectives run on the current device
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(minutes=timeout_minutes))
    return World(dist.get_rank(), dist.get_world_size(), backend, chosen)


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


def gather_sparse(grads, world):
    """The global batch's gradients of sparse embedding tables, from each rank's gradients of its share.

    Every rank's looked-up rows and their gradients are gathered and concatenated in rank order (the order of the
    global batch itself, as `shard` cuts it), their values divided by the world size as DDP averages: the lazy
    update then sees what one process given the whole batch would. What travels follows the rows a batch looks
    up, not the sizes of the tables. Returns (gradients, bytes this rank sent).
    """
    widths = [grad.shape[1] if grad.dim() > 1 else 1 for grad in grads]
    device = grads[0].device
    counts = torch.tensor([grad._nnz() for grad in grads], device=device)
    every = [torch.empty_like(counts) for _ in range(world.size)]
    dist.all_gather(every, counts)
    every = torch.stack(every).tolist()  # ranks x tables: rows each rank looked up in each table
    lengths = [sum(every[rank]) for rank in range(world.size)]
    value_lengths = [sum(n * width for n, width in zip(every[rank], widths)) for rank in range(world.size)]
    # all_gather takes tensors of one size: each rank pads its rows and values to the longest rank's
    rows = _padded(torch.cat([grad._indices()[0] for grad in grads]).to(torch.int32), max(lengths))
    values = _padded(torch.cat([grad._values().reshape(-1) for grad in grads]), max(value_lengths))
    all_rows, all_values = [torch.empty_like(rows) for _ in every], [torch.empty_like(values) for _ in every]
    dist.all_gather(all_rows, rows)
    dist.all_gather(all_values, values)
    per_table_rows, per_table_values = [[] for _ in grads], [[] for _ in grads]
    for rank in range(world.size):
        row_parts = all_rows[rank][:lengths[rank]].split(every[rank])
        value_parts = all_values[rank][:value_lengths[rank]].split([n * w for n, w in zip(every[rank], widths)])
        for table, (row_part, value_part) in enumerate(zip(row_parts, value_parts)):
            per_table_rows[table].append(row_part)
            per_table_values[table].append(value_part)
    gathered = []
    for grad, width, table_rows, table_values in zip(grads, widths, per_table_rows, per_table_values):
        indices = torch.cat(table_rows).long()[None]
        joined = torch.cat(table_values).div_(world.size).reshape(-1, *grad.shape[1:])
        gathered.append(torch.sparse_coo_tensor(indices, joined, grad.shape, is_coalesced=False))
    sent = counts.numel() * counts.element_size() + rows.numel() * rows.element_size() + \
        values.numel() * values.element_size()
    return gathered, sent


def _padded(tensor, length):
    return torch.cat([tensor, tensor.new_zeros(length - len(tensor))]) if len(tensor) < length else tensor
