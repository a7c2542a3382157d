"""Where training runs: one device (CPU, a CUDA GPU or Apple's MPS), and data-parallel processes launched by
`torchrun` (or `accelerate launch`, which sets the same variables) joined by torch.distributed.

`--device auto` takes CUDA when there is a GPU, as fastai does. Under torchrun on CUDA each rank takes the GPU of
its LOCAL_RANK and the backend is NCCL; on the CPU it is Gloo. HFCF_DIST_BACKEND overrides the backend, refused only
where it cannot work (NCCL without CUDA).

Without torchrun's variables (WORLD_SIZE unset or 1) nothing here starts a process group: one process trains
exactly as before. fastai's own `distrib_ctx` assumes CUDA and NCCL, so hfcf wraps the fastai Learner's model
itself (`training.DataParallel`) and shards each epoch's batches by rank (`TensorBatches`, `HistoryBatches`).

The batch size a user gives is the global batch: each of N ranks takes its share of every batch and the ranks'
gradients are averaged (each weighted by its share), so one step sees the same ratings, and the same learning rate
applies, whatever N is. Dense parameters are averaged by DDP's all-reduce. For the sparse embeddings (lazy Adam's),
each rank takes the ratings of the users it owns (`owners`: row r is rank r mod N's, `split_by_owner`), so a user's
rows are looked up and updated on that rank alone; the titles' rows, looked up everywhere, are updated whole on
every rank from the per-row sums that each rank sends the others (`to_owners`). What a step exchanges follows the
rows a batch looks up, not the sizes of the tables.
"""
import hashlib
import json
import math
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


def from_main(tensors, world):
    """Rank 0's values of `tensors` (buffers such as BatchNorm's statistics), written in place on every rank."""
    for tensor in tensors:
        dist.broadcast(tensor, 0)


def shard(rows, world):
    """This rank's part of one global batch: contiguous, sizes differing by at most one row across ranks."""
    if not world.distributed:
        return rows
    return torch.tensor_split(rows, world.size)[world.rank]


def owners(rows, world):
    """The rank that updates each of `rows` of a lazy embedding table under torchrun: rows are dealt out in turn
    (row r to rank r mod N), so every rank updates about 1/N of the rows a batch touches, popular or rare."""
    return rows % world.size


def split_by_owner(rows, keys, world):
    """This rank's part of one global batch of `rows`: those whose key (the user row of a rating) it owns, so a
    user's rows are looked up and updated on one rank alone and never sent; contiguous shares (`shard`) where that
    would leave a rank fewer than two (a small batch, or data dominated by a few users). Returns (rows, whether
    they were split by owner); every rank computes the same split, so all know which it was."""
    owner = owners(keys, world)
    if int(torch.bincount(owner, minlength=world.size).min()) < 2:
        return shard(rows, world), False
    return rows[owner == world.rank], True


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


@dataclass
class RowSums:
    """The gradients of one or more lazy tables looked up with the same indices (the dot model's factors and
    bias), summed per row: what a rank sends, and what an owner's optimizer steps on."""

    rows: torch.Tensor    # unique, ascending
    values: list          # per table: (len(rows), width), the rows' summed gradients


def unique(keys, size):
    """`torch.unique(keys, return_inverse=True)` for keys in [0, size). Where `size` is small beside the work of a
    sort (at most n log2 n for n keys: a batch's rows of a table of up to some hundred thousand rows), the keys are
    marked in `size` flags instead of sorted, in a third of the time or less."""
    if size > len(keys) * max(math.log2(max(len(keys), 1)), 1):
        return torch.unique(keys, return_inverse=True)
    flags = torch.zeros(size, dtype=torch.bool, device=keys.device).index_fill_(0, keys, True)
    found = flags.nonzero()[:, 0]
    places = torch.empty(size, dtype=torch.long, device=keys.device)
    places.index_copy_(0, found, torch.arange(len(found), device=keys.device))
    return found, places.index_select(0, keys)


def sum_rows(keys, size, values):
    """RowSums of `values`, those of the same key (each in [0, size)) added together; its `rows` are the keys,
    ascending. `values` holds, per table, one line per entry of `keys` in a list of tensors, joined without a copy."""
    found, inverse = unique(keys, size)
    sums = []
    for parts in values:
        total, at = parts[0].new_zeros(len(found), parts[0].shape[1]), 0
        for part in parts:
            total.index_add_(0, inverse[at:at + len(part)], part)
            at += len(part)
        sums.append(total)
    return RowSums(found, sums)


def _by_owner(rows, values, size, whole, world):
    """This rank's lookups of one group of tables (`size` rows each), summed per row: per rank, a RowSums of the
    rows it updates (every row, for tables that every rank updates whole)."""
    if whole:
        return [sum_rows(rows, size, [[part] for part in values])] * world.size
    span = -(-size // world.size)  # the most rows a rank owns
    # each owner's rows side by side, each by its place among that owner's rows (row // N)
    summed = sum_rows(owners(rows, world) * span + rows // world.size, world.size * span, [[part] for part in values])
    bounds = torch.searchsorted(summed.rows, torch.arange(world.size + 1, device=rows.device) * span).tolist()
    summed.rows = summed.rows % span * world.size + summed.rows // span
    return [RowSums(summed.rows[low:high], [part[low:high] for part in summed.values])
            for low, high in zip(bounds[:-1], bounds[1:])]


def _message(parts):
    """RowSums (one per group) as one flat float32 message: per group its row count, rows and values."""
    return torch.cat([piece for part in parts for piece in (
        _bits(torch.tensor([len(part.rows)], device=part.rows.device)), _bits(part.rows),
        *(value.reshape(-1) for value in part.values))])


def _parts(message, widths):
    """The RowSums of a `_message`, given each group's tables' widths."""
    parts, at = [], 0
    for group in widths:
        n = int(_integers(message[at:at + 1]))
        rows, at = _integers(message[at + 1:at + 1 + n]), at + 1 + n
        values = []
        for width in group:
            values.append(message[at:at + n * width].reshape(n, width))
            at += n * width
        parts.append(RowSums(rows, values))
    return parts


def to_owners(groups, world):
    """This rank's lookups in lazy tables, each row's gradient summed and sent to the ranks that update the row.

    `groups`: per group of tables looked up with the same indices, (rows looked up, [gradient per table, one line
    per lookup], the tables' row count, whether every rank updates them whole). A row of a table shared out among
    the ranks goes to its owner (`owners`), one of a whole table to every rank. Returns (per group, RowSums of the
    rows this rank updates over every rank's lookups, gradients averaged over the ranks as DDP averages; bytes
    sent). Summed before it is sent, what a step sends follows the rows a batch touches, not
    its lookups; a rank's own rows (all of its users', when the batch was split by owner) are never sent.
    """
    local = [_by_owner(rows, values, size, whole, world) for rows, values, size, whole in groups]
    received, sent = exchange([_message([group[rank] for group in local]) if rank != world.rank
                               else torch.empty(0, device=groups[0][0].device) for rank in range(world.size)], world)
    widths = [[part.shape[1] for part in values] for _, values, _, _ in groups]
    incoming = [_parts(message, widths) if rank != world.rank else [group[rank] for group in local]
                for rank, message in enumerate(received)]
    updated = []
    for (_, _, size, whole), found in zip(groups, zip(*incoming)):  # each group's parts in rank order: the batch's
        found = [part for part in found if len(part.rows)] or found[:1]
        if len(found) == 1:  # the rows came from one rank alone (a user's, on its owner): already summed
            summed = RowSums(found[0].rows, found[0].values)
        else:
            rows = torch.cat([part.rows for part in found])
            values = list(zip(*(part.values for part in found)))
            if whole:
                summed = sum_rows(rows, size, values)
            else:  # by each row's place among this rank's rows (row // N)
                summed = sum_rows(rows // world.size, -(-size // world.size), values)
                summed.rows = summed.rows * world.size + world.rank
        # each rank's loss is the mean over its share, weighted by it: the mean of the ranks' gradients is the
        # global batch's
        for part in summed.values:
            part.div_(world.size)
        updated.append(summed)
    return updated, sent


def from_owners(updated, world):
    """The new values of the rows this rank's optimizer updated, sent to every other rank: `updated` is, per group
    of tables, (rows, [new values per table]). Returns, per group, [(rows, [values per table])] from the other
    ranks, and bytes sent."""
    message = torch.cat([part for rows, values in updated
                         for part in (_bits(torch.tensor([len(rows)], device=rows.device)), _bits(rows),
                                      *(value.reshape(-1) for value in values))])
    received, sent = exchange([message.new_empty(0) if rank == world.rank else message
                               for rank in range(world.size)], world)
    updates = [[] for _ in updated]
    for rank, incoming in enumerate(received):
        if rank == world.rank:
            continue
        at = 0
        for (_, values), found in zip(updated, updates):
            n = int(_integers(incoming[at:at + 1]))
            rows, at = _integers(incoming[at + 1:at + 1 + n]), at + 1 + n
            new = []
            for value in values:
                new.append(incoming[at:at + n * value.shape[1]].reshape(n, value.shape[1]))
                at += n * value.shape[1]
            found.append((rows, new))
    return updates, sent
