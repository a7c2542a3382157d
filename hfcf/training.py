"""Fit hfcf's models with fastai: the machinery every kind shares. With hfcf.kinds' training methods, the only code
that imports fastai.

fastai's tabular DataLoader collates every batch from a DataFrame, which makes an epoch several times slower
than the model itself. `TensorBatches` (rating pairs) and `HistoryBatches` (users' rated titles) slice
pre-encoded tensors instead; everything else is fastai's own: `collab_learner` and `Learner`, `fit_one_cycle`,
its Adam, Recorder and metrics, `EmbeddingDotBias` and `EmbeddingNN`. Each kind (hfcf.kinds) says how its data,
Learner and weights are made. With models this small, fastai's per-batch costs are what is left to cut (see
`fit_one`).
"""
import ctypes
import gc
import math
import sys
import time
from dataclasses import dataclass, field, replace

import fastai
import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
import fastai.callback.schedule  # noqa: F401  (adds Learner.fit_one_cycle, which fit_one calls)
from fastai.callback.progress import ProgressCallback
from fastai.data.core import DataLoaders
from fastai.callback.core import Callback, CancelValidException
from fastai.learner import AvgSmoothLoss, CastToTensor, Metric
from fastai.optimizer import Optimizer
from fastai.torch_core import set_seed, to_detach

from . import distributed, scoring
from . import nn as hfnn
from .errors import DataError, HfcfError
from .kinds import KINDS


def lazy_adam_step(p, lr, mom, sqr_mom, eps, wd, do_wd=True, step=0, grad_avg=None, sqr_avg=None, moments=None,
                   idle_since=None, presummed=False, ranks=1, **kwargs):
    """fastai optimizer callback: fastai's Adam with decoupled weight decay, whose step costs what a batch touched.

    A dense parameter takes fastai's Adam step: `p *= 1 - lr * wd` where its `do_wd` is on, then the moments and
    the update. For an embedding with a sparse gradient only the rows the batch looked up are read and written
    ("lazy", as TensorFlow's LazyAdam); each first catches up on the steps it sat out (`_catch_up`: what dense Adam's
    momentum and weight decay did to it meanwhile, in closed form), so the tables end close to where fastai's Adam
    would have taken them, at the cost of the rows touched. A row's two moments sit side by side (`moments`, rows x
    2 x width: one gather and one scatter a step); `idle_since` holds the step each row was last updated. Under
    torchrun `DataParallel` hands each rank the gradient of the rows it updates already summed over the global
    batch (`presummed`), and `ranks`: row r's state sits at r // ranks, as a rank keeps only that of the rows it owns (every
    ranks-th: a user table's; 1 for a table updated whole).
    """
    step += 1
    debias_mom, debias_sqr = 1 - mom ** step, 1 - sqr_mom ** step
    decay = lr * wd if do_wd else 0.0
    grad = p.grad
    if grad.is_sparse:
        if moments is None:
            moments = p.new_zeros(-(-p.shape[0] // ranks), 2, p.shape[1])
            idle_since = torch.zeros(len(moments), dtype=torch.int32, device=p.device)
        if presummed:
            rows, summed = grad._indices()[0], grad._values()
        else:
            rows, position = _unique_rows(grad._indices()[0], p.shape[0])
            summed = p.new_zeros(len(rows), p.shape[1]).index_add_(0, position, grad._values())
        slots = rows if ranks == 1 else rows // ranks
        # index_select / index_copy_ rather than tensor[rows]: advanced indexing's gather and index_put cost
        # twice as much on CPU, and these rows are unique.
        weights, both = p.data.index_select(0, rows), moments.index_select(0, slots)
        idle = (step - 1 - idle_since.index_select(0, slots)).to(p.dtype)[:, None]
        _catch_up(weights, both, idle, lr * debias_sqr ** 0.5 / debias_mom, mom, sqr_mom, eps, decay)
        avg, sqr = both[:, 0], both[:, 1]
        weights.mul_(1 - decay)
        avg.mul_(mom).add_(summed, alpha=1 - mom)
        sqr.mul_(sqr_mom).addcmul_(summed, summed, value=1 - sqr_mom)
        moments.index_copy_(0, slots, both)
        idle_since.index_fill_(0, slots, step)
        p.data.index_copy_(0, rows, weights.addcdiv_(avg, (sqr / debias_sqr).sqrt_().add_(eps), value=-lr / debias_mom))
        return {"step": step, "moments": moments, "idle_since": idle_since, "presummed": False}
    if grad_avg is None:
        grad_avg, sqr_avg = torch.zeros_like(p), torch.zeros_like(p)
    p.data.mul_(1 - decay)
    grad_avg.mul_(mom).add_(grad, alpha=1 - mom)
    sqr_avg.mul_(sqr_mom).addcmul_(grad, grad, value=1 - sqr_mom)
    p.data.addcdiv_(grad_avg, (sqr_avg / debias_sqr).sqrt_().add_(eps), value=-lr / debias_mom)
    return {"step": step, "grad_avg": grad_avg, "sqr_avg": sqr_avg}


def _catch_up(weights, both, idle, step_size, mom, sqr_mom, eps, decay):
    """Bring rows `idle` steps behind to where dense Adam would have them. In each step a row sits out it shrinks by
    q = 1 - decay, its moments decay (mom, sqr_mom) and it still moves by `step_size * avg / sqrt(sqr)` of them, so
    its move after j such steps is r^j times the first, r = mom / sqrt(sqr_mom): over k steps the weights become
    q^k w - step_size * avg / sqrt(sqr) * sum_j r^j q^(k-j), a geometric sum in closed form (the rate and the bias
    corrections taken as those of the step that touches the row again)."""
    if not bool((idle > 0).any()):
        return
    avg, sqr = both[:, 0], both[:, 1]
    q, r = 1 - decay, mom / sqr_mom ** 0.5
    shrink, fade = q ** idle, r ** idle
    moves = r * (shrink - fade) / (q - r) if abs(q - r) > 1e-6 else idle * fade
    weights.mul_(shrink).addcdiv_(avg * moves, sqr.sqrt().add_(eps), value=-step_size)
    avg.mul_(mom ** idle)
    sqr.mul_(sqr_mom ** idle)


_recent_uniques = []  # (rows looked up, their unique rows and inverse) of the last two tables a lazy step updated


def _unique_rows(looked_up, size):
    """(unique rows, each lookup's place among them) of a table of `size` rows (`distributed.unique`), computed
    once for tables a step looks up with the same rows: the dot model's factors and biases (half its work). A copy
    of the rows is kept, as a sparse gradient's indices may be reused in place."""
    for seen, found in _recent_uniques:
        if seen.shape == looked_up.shape and torch.equal(seen, looked_up):
            return found
    found = distributed.unique(looked_up, size)
    _recent_uniques[:] = [(looked_up.clone(), found), *_recent_uniques[:1]]
    return found


def LazyAdam(params, lr, mom=0.9, sqr_mom=0.99, eps=1e-5, wd=0.0):
    """A fastai `Optimizer` taking `lazy_adam_step`: `fit_one_cycle` schedules its lr and momentum as Adam's."""
    return Optimizer(params, [lazy_adam_step], lr=lr, mom=mom, sqr_mom=sqr_mom, eps=eps, wd=wd)


def sparse_embeddings(model):
    """Make every embedding of `model` give sparse gradients (rows looked up, not whole tables), for `LazyAdam`."""
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            module.sparse = True


@dataclass
class Fitted:
    """One trained model: its weights under our key names, the settings that made it and how long it took."""

    kind: str
    state_dict: dict
    settings: dict
    fit_seconds: float
    history: list = field(default_factory=list)
    bytes_per_step: int = 0  # gradients one rank sent a step under torchrun (0 in one process)
    # The fastai Learner, kept for its model (parity checks); never saved. Its DataLoaders are dropped (GBs at 25M),
    # so `get_preds` needs an explicit `dl`.
    learner: object = None


def batch_bounds(n, bs, training, world=distributed.SINGLE):
    """(start, end) of each global batch of `n` rows. In training, a last batch too small for every rank to take
    two rows joins the one before: BatchNorm cannot normalise one row, and one rating is no batch for a step."""
    starts = list(range(0, n, bs))
    if training and len(starts) > 1 and n - starts[-1] < 2 * world.size:
        starts.pop()
    return list(zip(starts, [*starts[1:], n]))


class TensorBatches:
    """(x, y) batches sliced from in-memory tensors; fastai's Learner needs only iteration, len and `to`.

    When shuffling (training) under torchrun, every rank draws the same order and takes its share of each batch:
    the ratings of the users it owns (`distributed.split_by_owner`). `share` is the part of the last global batch
    this rank took, `by_owner` whether it was split by owner (`DataParallel` reads both).
    """

    def __init__(self, x, y, bs, shuffle, seed=0, world=distributed.SINGLE):
        self.x, self.y, self.bs, self.shuffle, self.world = x, y, bs, shuffle, world
        self.generator = torch.Generator().manual_seed(seed)
        self.share, self.by_owner = 1.0, True

    def __len__(self):
        return len(batch_bounds(len(self.x), self.bs, self.shuffle, self.world))

    def __iter__(self):
        if not self.shuffle:
            for start, end in batch_bounds(len(self.x), self.bs, False):
                yield self.x[start:end], self.y[start:end]
            return
        # the same order as int64 (randperm's draws depend on n alone), in 60% of its time
        order = torch.randperm(len(self.x), generator=self.generator,
                               dtype=torch.int32 if len(self.x) < 2 ** 31 else torch.int64).to(self.x.device)
        users = self.x[:, 0]
        for start, end in batch_bounds(len(self.x), self.bs, True, self.world):
            rows = order[start:end]
            if self.world.distributed:
                rows, self.by_owner = distributed.split_by_owner(rows, users.index_select(0, rows), self.world)
                self.share = len(rows) / (end - start)
            # index_select rather than advanced indexing: a third less time for these gathers on CPU
            yield self.x.index_select(0, rows), self.y.index_select(0, rows)

    def to_detach(self, b, cpu=True, gather=True):
        """fastai's `to_detach` (its Learner asks the loader first): a held-out batch's outputs are not gathered
        across ranks, as every rank scores the whole held-out set with the same model (`DataParallel`); a gather
        would only repeat them, three collectives a batch."""
        return to_detach(b, cpu, gather and self.shuffle)

    def to(self, device):
        self.x, self.y = self.x.to(device), self.y.to(device)
        return self


def encode(frame, users, items):
    """(x, y) tensors: x holds (user row, item row) pairs as int32 (half the memory of int64; embeddings take
    either), y the ratings as float32."""
    x = np.stack([users.rows(frame["user"]), items.rows(frame["title"])], axis=1)
    return torch.from_numpy(x), torch.tensor(frame["rating"].to_numpy(), dtype=torch.float32)


@dataclass
class Histories:
    """Every user's rated titles, grouped by user row (CSR): row r owns `items[starts[r]:starts[r + 1]]`."""

    starts: torch.Tensor   # int64, one more than the user rows
    items: torch.Tensor    # int64 item rows
    weights: torch.Tensor  # float32: the rating on the model's scale, (rating - low) / (high - low)

    @classmethod
    def from_frame(cls, frame, users, items, y_range):
        user_rows, item_rows = users.rows(frame["user"]), items.rows(frame["title"])
        order = np.argsort(user_rows, kind="stable")
        starts = np.concatenate([[0], np.cumsum(np.bincount(user_rows, minlength=len(users)))])
        weights = scoring.rating_weights(frame["rating"].to_numpy()[order], y_range)
        return cls(torch.as_tensor(starts, dtype=torch.long), torch.as_tensor(item_rows[order], dtype=torch.long),
                   torch.as_tensor(weights, dtype=torch.float32))

    def lengths(self):
        return torch.diff(self.starts)

    def batch(self, rows):
        """(items, weights, offsets) of the users `rows` in `F.embedding_bag`'s flat layout."""
        starts, lengths = self.starts[rows], self.starts[rows + 1] - self.starts[rows]
        offsets = torch.cumsum(lengths, 0) - lengths
        positions = torch.arange(int(lengths.sum()), device=lengths.device) - torch.repeat_interleave(offsets, lengths)
        flat = torch.repeat_interleave(starts, lengths) + positions
        return self.items[flat], self.weights[flat], offsets

    def split(self, share, rng):
        """(kept, held out): a random `share` of each user's titles (rounded up; none of a user's only title)."""
        lengths = self.lengths().numpy()
        owners = np.repeat(np.arange(len(lengths)), lengths)
        shuffled = np.lexsort((rng.random(len(owners)), owners))  # each user's titles in a random order
        position = np.arange(len(owners)) - np.repeat(self.starts[:-1].numpy(), lengths)
        held = np.zeros(len(owners), dtype=bool)
        held[shuffled] = position < np.where(lengths > 1, np.ceil(share * lengths), 0)[owners]
        return self._select(~held, owners), self._select(held, owners)

    def _select(self, keep, owners):
        starts = np.concatenate([[0], np.cumsum(np.bincount(owners[keep], minlength=len(self.starts) - 1))])
        mask = torch.from_numpy(keep)
        return Histories(torch.as_tensor(starts, dtype=torch.long), self.items[mask], self.weights[mask])

    def to(self, device):
        return Histories(self.starts.to(device), self.items.to(device), self.weights.to(device))


class HistoryBatches:
    """Batches of users for `TopNModel`: (input items, weights, offsets, target items, target owners).

    Inputs are what each user rated in training; targets are the titles to score as chosen: the same titles when
    fitting (an autoencoder; dropout hides part of the input), their held-out titles when validating.
    """

    def __init__(self, inputs, targets, rows, bs, shuffle, seed=0, world=distributed.SINGLE):
        self.inputs, self.targets, self.rows, self.bs, self.shuffle = inputs, targets, rows, bs, shuffle
        self.world = world if shuffle else distributed.SINGLE
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self):
        return len(batch_bounds(len(self.rows), self.bs, self.shuffle, self.world))

    def __iter__(self):
        rows = self.rows[torch.randperm(len(self.rows), generator=self.generator).to(self.rows.device)] \
            if self.shuffle else self.rows
        for start, end in batch_bounds(len(rows), self.bs, self.shuffle, self.world):
            batch = distributed.shard(rows[start:end], self.world)
            items, weights, offsets = self.inputs.batch(batch)
            targets, _, target_offsets = self.targets.batch(batch)
            yield items, weights, offsets, targets, hfnn.bag_owners(target_offsets, len(targets))

    def to(self, device):
        self.inputs, self.targets, self.rows = self.inputs.to(device), self.targets.to(device), self.rows.to(device)
        return self


class ChoiceLoss:
    """Squared error of every title's score against "rated" (1) or "not rated" (0), summed per user, mean per batch.

    The sum over the whole catalogue is taken the cheaper of two exact ways: scoring every title for every user
    in the batch (users x titles x factors), or through the output vectors' Gram matrix as implicit ALS does
    (titles x factors^2, whatever the batch size), which wins once a batch has more users than factors.
    """

    def __init__(self, model):
        self.model = model

    def __call__(self, vectors, targets, owners):
        # F.embedding rather than tensor[index]: the backward of advanced indexing (an accumulating index_put)
        # cost twice the rest of a step on CPU.
        outputs, bias = self.model.item_outputs.weight, self.model.item_bias.weight[:, 0]
        if len(vectors) < outputs.shape[1]:
            scores = self.model.scores(vectors)
            every, chosen = (scores ** 2).sum(), scores.flatten()[owners * scores.shape[1] + targets]
        else:
            every = (((vectors @ (outputs.T @ outputs)) * vectors).sum() + 2 * (vectors @ (outputs.T @ bias)).sum()
                     + len(vectors) * (bias @ bias))
            chosen = ((F.embedding(owners, vectors) * F.embedding(targets, outputs)).sum(-1)
                      + F.embedding(targets, bias[:, None])[:, 0])
        return (every + (1 - 2 * chosen).sum()) / max(len(vectors), 1)


class NDCGAtK(Metric):
    """Held-out NDCG@k with binary gains: how high each user's later titles rank among those not rated in training.

    What the top-N model's epochs are chosen by: over a deep list (k=100) it follows the top-10 precision of a
    larger held-out share, where precision@10 on a tenth of a user's titles counts too few hits to tell a good
    length from a worse one (BENCHMARKS.md, ranking).
    """

    def __init__(self, k=100):
        self.k = k

    @property
    def name(self):
        return f"ndcg@{self.k}"

    def reset(self):
        self.total, self.users = 0.0, 0

    def accumulate(self, learn):
        items, _, offsets = learn.xb
        targets, owners = learn.yb
        scores = getattr(learn.model, "module", learn.model).scores(learn.pred)  # unwrapped from DDP
        scores[hfnn.bag_owners(offsets, len(items)), items] = -math.inf  # titles rated in training
        relevant = torch.zeros_like(scores, dtype=torch.bool)
        relevant[owners, targets] = True
        k = min(self.k, scores.shape[1])  # a catalogue may be smaller than k
        discounts = 1 / torch.log2(torch.arange(2, k + 2, device=scores.device, dtype=scores.dtype))
        gains = relevant.gather(1, scores.topk(k, dim=1).indices).to(scores.dtype)
        ideal = discounts.cumsum(0)[relevant.sum(1).clamp(1, k) - 1]
        self.total += float(((gains @ discounts) / ideal).sum())
        self.users += len(offsets)

    @property
    def value(self):
        return self.total / self.users if self.users else None


class CollabTensorLoaders(DataLoaders):
    """DataLoaders that also answer `collab_learner`'s questions (`classes`, `cat_names`) about the vocab."""

    def __init__(self, train, valid, users, items, n_inp=1):
        super().__init__(train, valid)
        self.classes = {"user": list(users.keys), "title": list(items.keys)}
        self.cat_names, self.n_inp = ["user", "title"], n_inp


def _epoch_logger(kind, learn, log):
    """Plain one-line-per-epoch log for non-terminals, where fastprogress's bar floods the output."""
    def write(row):
        names = learn.recorder.metric_names
        if len(row) < len(names):  # not scored this epoch (`ValidateLastEpoch`): its training loss and time
            names = [names[0], names[1], names[-1]]
        parts = [f"{name.lstrip('_')} {value:.4f}" if isinstance(value, float) else f"{name} {value}"
                 for name, value in zip(names[1:], row[1:])]
        log(f"{kind} epoch {row[0] + 1}: " + ", ".join(parts))
    return write


def mse(predicted, target):
    """Mean squared error of the flattened tensors.

    fastai's `MSELossFlat` returns a `TensorBase`, whose `__torch_function__` then runs on every use of the loss
    (backward, Recorder, callbacks): that cost more per batch than this whole model's forward pass.
    """
    return F.mse_loss(predicted.view(-1), target.view(-1))


class Dropout(torch.nn.Dropout):
    """`nn.Dropout` with its mask drawn by `rand_like`.

    On CPU, the `bernoulli_` that torch's dropout draws its mask with is a large share of an EmbeddingNN
    epoch; a uniform draw and a comparison give the same distribution in about half the time (BENCHMARKS.md).
    """

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        return x * (torch.rand_like(x) >= self.p).to(x.dtype).mul_(1 / (1 - self.p))


def fast_dropout(module):
    """Swap every `nn.Dropout` in `module` for `Dropout` (no parameters: the state dict is unchanged)."""
    for name, child in module.named_children():
        if type(child) is torch.nn.Dropout:
            setattr(module, name, Dropout(child.p))
        else:
            fast_dropout(child)


class DataParallel(Callback):
    """Average the ranks' gradients every step (fastai's `DistributedTrainer` without its CUDA assumptions).

    Dense parameters go through DistributedDataParallel's all-reduce. The tables that lazy Adam updates (sparse
    embeddings) are left out of it. Each rank takes the ratings of the users it owns from every batch
    (`TensorBatches`, `distributed.owners`: row r is rank r mod N's), so the rows of the tables looked up by user
    are shared out: a user's rows are looked up, updated (their Adam moments kept) and summed on their owner alone.
    The other tables (titles) are looked up by every rank, and every rank keeps and updates them whole, as DDP does
    its parameters but for the rows a batch touched: each rank sums its gradients per title row and sends the sums
    to the others (`distributed.to_owners`, one all-to-all a step, which carries users' rows too when a batch was
    not split by owner), and every rank takes the same step from the sums over the whole global batch. A user's new
    values are sent only when another rank is about to read them: before validating, at the end of a fit, or before
    a batch too small to split by owner. So every rank holds the whole model whenever it is read. Buffers are not
    broadcast each step: the top-N model's user vectors are filled in after training, and each rank's BatchNorm
    statistics follow its own share (rank 0's are saved). `bytes_per_step` counts what this rank sent.
    """

    def __init__(self, world):
        self.world = world
        self.sent, self.steps = 0, 0

    def before_fit(self):
        self.inner = self.learn.model
        self.learn.recorder.smooth_loss = ShareSmoothLoss(self.learn.recorder.smooth_loss.beta)
        self.tables = [module for module in self.inner.modules() if isinstance(module, torch.nn.Embedding)
                       and module.sparse and module.weight.requires_grad]
        sparse = {id(module.weight) for module in self.tables}
        named = [(name, p) for name, p in self.inner.named_parameters() if p.requires_grad]
        dense = [p for _, p in named if id(p) not in sparse]
        self.dense_bytes = sum(p.numel() * p.element_size() for p in dense)
        # rows of a user table this rank updated and the others have not received yet
        self.unsent = {table: torch.zeros(len(table.weight), dtype=torch.bool, device=table.weight.device)
                       for table in self.tables}
        self.groups, self.updated, self.looked_up = [], [], {}
        self.hooks = [table.register_forward_pre_hook(self._record) for table in self.tables]
        if dense:
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                self.inner, [name for name, p in named if id(p) in sparse])
            device = torch.device(self.world.device)
            self.learn.model = DistributedDataParallel(self.inner, broadcast_buffers=False,
                                                       device_ids=[device] if device.type == "cuda" else None)

    def _record(self, table, inputs):
        self.looked_up[table] = inputs[0]

    def _groups(self):
        """[(tables, by user)]: the lazy tables a forward pass looked up, grouped by the index tensor they were
        given, and whether that tensor is the batch's user column (a view of it, as the model's forward takes it).
        The same on every rank: it follows the model's code, not the rows drawn."""
        groups = {}
        for table in self.tables:
            groups.setdefault(id(self.looked_up[table]), []).append(table)
        users = self.learn.xb[0][:, 0] if hasattr(self.learn.dl, "by_owner") else None
        return [(tables, users is not None and _same_view(self.looked_up[tables[0]], users))
                for tables in groups.values()]

    def before_batch(self):
        if self.learn.training and not getattr(self.learn.dl, "by_owner", True):
            self._send_unsent()  # every rank looks up users of every rank in this batch

    def after_loss(self):
        # a rank's loss is the mean over its share of the batch: weighted by that share, the ranks' average (DDP's,
        # and the lazy tables' in `to_owners`) is the mean over the whole batch, however unequal the shares
        if self.learn.training and hasattr(self.learn.dl, "share"):
            self.learn.loss_grad = self.learn.loss_grad * (self.learn.dl.share * self.world.size)

    def after_backward(self):
        self.sent += self.dense_bytes
        self.steps += 1
        if not self.tables:
            return
        self.groups = self._groups()
        self.updated, sent = distributed.to_owners(
            [(tables[0].weight.grad._indices()[0], [table.weight.grad._values() for table in tables],
              len(tables[0].weight), not by_user) for tables, by_user in self.groups], self.world)
        for (tables, by_user), mine in zip(self.groups, self.updated):
            for table, values in zip(tables, mine.values):
                table.weight.grad = torch.sparse_coo_tensor(mine.rows[None], values, table.weight.shape,
                                                            is_coalesced=True, check_invariants=False)
                state = self.learn.opt.state[table.weight]
                state["presummed"] = True
                state["ranks"] = self.world.size if by_user else 1  # whose Adam moments this rank keeps
        self.sent += sent

    def after_step(self):
        for (tables, by_user), mine in zip(self.groups, self.updated):
            if by_user:
                self.unsent[tables[0]].index_fill_(0, mine.rows, True)
        for table in self.tables:
            table.weight.grad = None  # the summed gradient served its step; the next backward starts afresh

    def _send(self, updated):
        """Every rank's new values of the rows it updated, `updated` [(rows, tables)], written on every other."""
        new = [(rows, [table.weight.data.index_select(0, rows) for table in tables]) for rows, tables in updated]
        received, sent = distributed.from_owners(new, self.world)
        for (_, tables), found in zip(updated, received):
            for rows, values in found:
                for table, value in zip(tables, values):
                    table.weight.data.index_copy_(0, rows, value)
        self.sent += sent

    def _send_unsent(self):
        users = [tables for tables, by_user in self.groups if by_user]
        if not users:  # no such tables in this model (or no step yet): the same on every rank
            return
        self._send([(self.unsent[tables[0]].nonzero()[:, 0], tables) for tables in users])
        for tables in users:
            self.unsent[tables[0]].zero_()

    def before_validate(self):
        self._send_unsent()
        # every rank scores the whole held-out set (`TensorBatches.to_detach`) with the model rank 0 will save
        distributed.from_main([buffer for module in self.inner.modules()
                               if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
                               for buffer in module.buffers()], self.world)

    @property
    def bytes_per_step(self):
        return round(self.sent / self.steps) if self.steps else 0

    def after_fit(self):
        self._send_unsent()
        for hook in self.hooks:
            hook.remove()
        self.learn.model = self.inner


class ShareSmoothLoss(AvgSmoothLoss):
    """fastai's smoothed training loss, of this rank's share of each batch (the one rank 0 logs): fastai gathers it
    across ranks, a collective each step where every rank waits for the slowest."""

    def accumulate(self, learn):
        self.count += 1
        self.val = torch.lerp(to_detach(learn.loss.mean(), gather=False), self.val, self.beta)


def _same_view(a, b):
    """Whether tensors `a` and `b` are the same view of the same memory."""
    return (a.data_ptr(), a.shape, a.stride()) == (b.data_ptr(), b.shape, b.stride())


def release_freed_memory(collect=True):
    """Give the memory that torch and numpy have freed back to the operating system (glibc's `malloc_trim`), first
    freeing what unreachable objects hold (`collect`): a fastai Learner and its callbacks refer to one another, so
    a Learner let go of (a search's, with its model and optimizer state) waits for the cycle collector.

    glibc keeps freed heap pages for reuse, and with tensors of changing sizes coming and going every batch a
    process's resident memory climbs epoch after epoch: the top-N fit on 5M ratings grew 0.1 GB an epoch (5.8 GB
    by its tenth epoch at 10M) and stayed flat with a trim. Does nothing where there is no glibc.
    """
    if collect:
        gc.collect()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


try:
    _MALLOC_TRIM = getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc's; absent on macOS and musl
except OSError:
    _MALLOC_TRIM = None


class ValidateLastEpoch(Callback):
    """Score the held-out data after the last epoch of each `fit_one_cycle` only: the search reads the figure at
    the end of a run and the refit logs its final one, and scoring every epoch cost a third of the top-N fit."""

    trained = False  # a training pass came first: this is `fit`'s validation, not `get_preds`' or `validate`'s

    def before_train(self):
        self.trained = True

    def before_validate(self):
        trained, self.trained = self.trained, False
        if trained and self.epoch < self.n_epoch - 1:
            raise CancelValidException


class ReleaseFreedMemory(Callback):
    """`release_freed_memory` after every epoch: a few milliseconds, against GBs of retained heap at scale."""

    order = 100

    def after_epoch(self):
        release_freed_memory(collect=False)  # a collection every epoch would cost more than the trim


INNER_SHARE = 0.1  # of the training data, held out to choose the epochs on (ratings; top-N: each user's titles)
CYCLE_GROWTH = 0.5  # each one-cycle run of the search adds this share of the epochs run so far (at least one)
FIRST_STEPS = 64    # the search's first run takes at least this many steps: fewer leave Adam's models near their start
MIN_GAIN = 0.001    # a run must better the best figure by this share of it to be worth its 50% more epochs


def _inner_figure(learn, metric):
    names = [name.lstrip("_") for name in learn.recorder.metric_names[1:]]
    value = learn.recorder.values[-1][names.index(metric)] if learn.recorder.values else None
    return float(value) if value is not None else math.nan


def choose_epochs(learn, recipe, settings, wd):
    """How many epochs of `fit_one_cycle` this data wants: (epochs, inner figure, [(epochs, figure), ...]).

    One-cycle runs follow each other on the Learner (its fitted-on data is the inner split): the first of at
    least FIRST_STEPS steps, each next one adding half the epochs run so far, so that every candidate length ends
    annealed; the search stops at the first run that does not beat the best figure on the held-out slice by
    MIN_GAIN of it (a model creeping along a plateau is not worth its cost), or at `max_epochs`. The cost is about
    1.5x the chosen epochs, whatever the data's size.
    """
    sign = 1 if recipe.inner_lower_is_better else -1
    best, best_epochs, total, tried = math.inf, 0, 0, []
    first = math.ceil(FIRST_STEPS / max(len(learn.dls.train), 1))
    while total < settings.max_epochs:
        length = min(max(1, math.ceil(total * CYCLE_GROWTH)) if total else first, settings.max_epochs - total)
        learn.fit_one_cycle(length, settings.lr, wd=wd)
        total += length
        figure = _inner_figure(learn, recipe.inner_metric)
        tried.append((total, round(figure, 4)))
        bar = best - MIN_GAIN * abs(best) if math.isfinite(best) else best
        if not sign * figure < bar:  # no better (or not finite): longer runs do not pay
            break
        best, best_epochs = sign * figure, total
    return best_epochs, sign * best, tried


def search(recipe, kind, settings, train, users, items, y_range, seed, log, world, start=None):
    """(settings with the epochs chosen, how): the count `choose_epochs` finds on INNER_SHARE of the training data
    held out, fitted on the rest (from the weights of `start`'s kind refitted on the rest, when it starts from
    another kind)."""
    fitted_on, held_out = recipe.inner_split(train, INNER_SHARE, np.random.default_rng(seed + 1))
    if recipe.inner_size(held_out) == 0:
        raise DataError(f"{kind}: too few ratings to hold out a share to choose the epochs on; pass --epochs")
    inner_log = lambda line: log(f"choosing: {line}")  # noqa: E731
    start_weights = start and _refit(start, fitted_on, held_out, users, items, y_range, seed, inner_log, world)
    learn, _, wd = _learner(recipe, kind, settings, fitted_on, held_out, users, items, y_range, seed, inner_log,
                            world, start_weights)
    epochs, figure, tried = choose_epochs(learn, recipe, settings, wd)
    del learn
    release_freed_memory()
    if not (epochs and math.isfinite(figure)):
        raise HfcfError(f"{kind}: training diverged (the loss became NaN or infinite); lower --lr or raise --wd")
    log(f"{kind}: {epochs} epochs chosen ({recipe.inner_metric} {figure:.4f} on {INNER_SHARE:.0%} held out of the "
        "training data); fitting on all of it")
    how = {"on": recipe.inner_description, "share": INNER_SHARE, "metric": recipe.inner_metric,
           "figure": round(figure, 4), "max_epochs": settings.max_epochs, "tried": tried}
    return replace(settings, epochs=epochs), how


def _refit(start, train, valid, users, items, y_range, seed, log, world):
    """The weights (our names) of the fitted model `start` refitted on `train`, with the settings and epochs it
    was fitted with: what a kind that starts from it starts from on that data."""
    recipe, settings = KINDS[start.kind], KINDS[start.kind].Settings(**{
        name: tuple(value) if isinstance(value, list) else value for name, value in start.settings.items()
        if name in KINDS[start.kind].Settings.names()})
    learn, chosen, wd = _learner(recipe, start.kind, settings, train, valid, users, items, y_range, seed, log, world)
    learn.fit_one_cycle(settings.epochs, settings.lr, wd=wd)
    return {key: value.detach() for key, value in recipe.export(learn, train, chosen, len(users)).items()}


def _learner(recipe, kind, settings, train, valid, users, items, y_range, seed, log, world, start_weights=None):
    """A fastai Learner for `recipe` on (train, valid), with only the callbacks that fitting needs: every callback
    is called for every event of every batch, and `CastToTensor` has nothing to cast from plain tensors. With
    `start_weights`, the kind `recipe.starts_from` fitted on the same data, its model starts from them."""
    set_seed(seed, reproducible=True)
    dls = recipe.loaders(train, valid, settings, users, items, seed, world).to(torch.device(world.device))
    chosen = recipe.resolved(settings, users, items)
    learn = recipe.learner(dls, settings, chosen, y_range)
    if start_weights is not None:
        recipe.start_from(learn, {key: value.to(world.device) for key, value in start_weights.items()})
    learn.remove_cb(CastToTensor)
    learn.add_cbs([ReleaseFreedMemory(), ValidateLastEpoch()])
    if world.distributed:
        learn.add_cb(DataParallel(world))
    if len(dls.valid) == 0:  # --valid-pct 0: nothing held out, so no validation loss or metric to record
        learn.metrics = []
        learn.recorder.valid_metrics = False
    if not world.is_main or not sys.stderr.isatty():
        learn.remove_cb(ProgressCallback)
        learn.logger = _epoch_logger(kind, learn, log if world.is_main else lambda *_: None)
    return learn, chosen, recipe.fit_wd(settings, dls)


def fit_one(kind, settings, train, valid, users, items, y_range, seed, log=print, world=distributed.SINGLE,
            start=None):
    """Fit one model with fastai's `fit_one_cycle` on data from its recipe's `encode`; refuses a diverged loss.

    The epochs, when `settings.epochs` is 0 (the default), are chosen on INNER_SHARE of the training data held out
    (`search`); then the model is fitted afresh on all the training data for that many (`valid`, the
    evaluation's held-out data, is only logged, never chosen on). A NaN loss is caught after fitting (the final
    metrics come out non-finite) rather than by `TerminateOnNaNCallback` on each batch. Under torchrun every rank
    runs this with the same seed (the same initial weights and inner slice); only rank 0 logs. A kind that starts
    from another (`starts_from`) gets `start`, that kind fitted on the same `train`: the refit starts from its
    weights, the search from the same model refitted on the search's share.
    """
    recipe = KINDS[kind]
    started = time.perf_counter()
    how = None
    if not settings.epochs:
        settings, how = search(recipe, kind, settings, train, users, items, y_range, seed, log, world, start)
    epochs = settings.epochs
    learn, chosen, wd = _learner(recipe, kind, settings, train, valid, users, items, y_range, seed, log, world,
                                 start and start.state_dict)
    learn.fit_one_cycle(epochs, settings.lr, wd=wd)
    seconds = time.perf_counter() - started
    chosen.update(epochs=epochs, epochs_chosen=how)  # None: the count was asked for
    history = [[float(v) if v is not None else math.nan for v in values] for values in learn.recorder.values]
    if len(history) < epochs or not math.isfinite(history[-1][0]) or \
            (learn.recorder.valid_metrics and not all(map(math.isfinite, history[-1]))):
        raise HfcfError(f"{kind}: training diverged (the loss became NaN or infinite); lower --lr or raise --wd")
    learn.model.cpu().eval()  # weights saved from the CPU copy: a folder is the same whatever trained it
    state = {key: value.detach().float().clone().contiguous() if value.is_floating_point() else value.clone()
             for key, value in recipe.export(learn, train, chosen, len(users)).items()}
    learn.dls = None  # the Learner is kept for its model; its batches' tensors (GBs at 25M) are not,
    learn.opt.clear_state()  # nor its optimizer's moments (as large as the embedding tables)
    sent = sum(cb.bytes_per_step for cb in learn.cbs if isinstance(cb, DataParallel))
    return Fitted(kind, state, chosen, round(seconds, 2), history, sent, learn)


def fit(kinds, settings, train_frame, valid_frame, users, items, y_range, seed, log=print, world=distributed.SINGLE):
    """Fit each model in `kinds` on the same ratings (its settings checked themselves when made); returns
    {kind: Fitted}. A kind that starts from another takes it from this run, or fits it first (with `settings`'
    entry for it, else its defaults) without returning it."""
    for kind in kinds:
        if not isinstance(settings[kind], KINDS[kind].Settings):
            raise TypeError(f"{kind} takes {KINDS[kind].Settings.__name__}, not {type(settings[kind]).__name__}")
        distributed.check_batch(world, kind, settings[kind].bs)
    encodings = [type(KINDS[kind]).encode for kind in kinds]  # the rating kinds share one encoding
    encoded, fitted = {}, {}
    for position, kind in enumerate(kinds):
        encoding = encodings[position]
        if encoding not in encoded:
            encoded[encoding] = tuple(KINDS[kind].encode(frame, users, items, y_range)
                                      for frame in (train_frame, valid_frame))
        data = encoded[encoding] if encoding in encodings[position + 1:] else encoded.pop(encoding)
        source, start = KINDS[kind].starts_from(settings[kind]), None
        if source:
            start = fitted.get(source) or fit_one(source, settings.get(source) or KINDS[source].defaults(
                len(train_frame)), *data, users, items, y_range, seed, lambda line: log(f"{kind}'s start: {line}"),
                world)
        fitted[kind] = fit_one(kind, settings[kind], *data, users, items, y_range, seed, log, world, start)
        del data  # freed before the next model's data is made (the Learner keeps none of it)
        release_freed_memory()
    return fitted


def fastai_version():
    return fastai.__version__
