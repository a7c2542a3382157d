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
parameters are averaged by DDP's all-reduce. The sparse embeddings (lazy Adam's) are shared out among the ranks,
a table to each: every rank sends the rows it looked up in a table and their gradients to the table's owner
(`to_owners`), the owner updates the rows, and sends their new values to the others (`from_owners`). What a step
exchanges follows the rows a batch looks up, not the sizes of the tables, and the update's work is divided.
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


def exchange(payloads, world):
    """Send `payloads[d]` (a flat float32 tensor) to rank d, from every rank at once (one all-to-all: on Gloo about
    twice as fast as an all-gather of the same bytes). Returns (what each rank sent this one, bytes sent to others)."""
    sizes = torch.tensor([len(payload) for payload in payloads], device=payloads[0].device)
    incoming = torch.empty_like(sizes)
    dist.all_to_all_single(incoming, sizes)
    sizes, incoming = sizes.tolist(), incoming.tolist()
    received = payloads[0].new_empty(sum(incoming))
    dist.all_to_all_single(received, torch.cat(payloads), incoming, sizes)
    sent = sum(size for rank, size in enumerate(sizes) if rank != world.rank) * 4 + 8 * world.size
    return received.split(incoming), sent


def _bits(integers):
    """int32 values carried bit for bit in a float32 message (a copy, never arithmetic), so one message holds all."""
    return integers.to(torch.int32).view(torch.float32)


def _integers(bits):
    return bits.view(torch.int32).long()


def owner(table, world):
    """The rank whose optimizer updates embedding table number `table` (in the model's order) under torchrun."""
    return table % world.size


def to_owners(grads, world):
    """Each rank's sparse embedding gradients (one per table), each table's sent to the rank that owns it.

    Returns {table: its gradient over the global batch} for the tables this rank owns: every rank's lookups in
    rank order (the global batch's own order, as `shard` cuts it), their gradients averaged over the ranks as DDP
    averages; and the bytes sent. The owner's update then sees what one process given the whole batch would.
    """
    messages = [[] for _ in range(world.size)]
    for table, grad in enumerate(grads):
        rows = grad._indices()[0]
        messages[owner(table, world)] += [_bits(torch.tensor([len(rows)], device=rows.device)), _bits(rows),
                                          grad._values().reshape(-1)]
    received, sent = exchange([torch.cat(message) if message else grads[0]._values().new_empty(0)
                               for message in messages], world)
    mine = [table for table in range(len(grads)) if owner(table, world) == world.rank]
    parts = {table: [] for table in mine}
    for message in received:
        at = 0
        for table in mine:
            n, width = int(_integers(message[at:at + 1])), grads[table].shape[1:].numel()
            parts[table].append((_integers(message[at + 1:at + 1 + n]), message[at + 1 + n:at + 1 + n + n * width]))
            at += 1 + n + n * width
    owned = {}
    for table, table_parts in parts.items():
        shape = grads[table].shape
        rows = torch.cat([part[0] for part in table_parts])
        # each rank's loss is the mean over its share: the mean of the ranks' gradients is the global batch's
        values = torch.cat([part[1] for part in table_parts]).div_(world.size).reshape(len(rows), *shape[1:])
        owned[table] = torch.sparse_coo_tensor(rows[None], values, shape, is_coalesced=False)
    return owned, sent


def from_owners(updated, shapes, world):
    """Every owner's updated rows sent to every other rank: `updated` is {table: (rows, new values)} of the tables
    this rank owns, `shapes` every table's shape. Returns [(table, rows, values)] from the others, and bytes sent."""
    message = torch.cat([part for rows, values in updated.values()
                         for part in (_bits(torch.tensor([len(rows)], device=rows.device)), _bits(rows),
                                      values.reshape(-1))])
    received, sent = exchange([message.new_empty(0) if rank == world.rank else message
                               for rank in range(world.size)], world)
    updates = []
    for rank, incoming in enumerate(received):
        if rank == world.rank:
            continue
        at = 0
        for table, shape in enumerate(shapes):
            if owner(table, world) != rank:
                continue
            n, width = int(_integers(incoming[at:at + 1])), shape[1:].numel()
            updates.append((table, _integers(incoming[at + 1:at + 1 + n]),
                            incoming[at + 1 + n:at + 1 + n + n * width].reshape(n, *shape[1:])))
            at += 1 + n + n * width
    return updates, sent
