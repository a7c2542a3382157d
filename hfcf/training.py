"""Fit hfcf's models with fastai. The only module that imports fastai.

fastai's tabular DataLoader collates every batch from a DataFrame, which makes an epoch several times slower
than the model itself. `TensorBatches` (rating pairs) and `HistoryBatches` (users' rated titles) slice
pre-encoded tensors instead; everything else is fastai's own: `collab_learner` and `Learner`, `fit_one_cycle`,
its Adam, Recorder and metrics, `EmbeddingDotBias` and `EmbeddingNN`. One `Recipe` per model kind says how
its data, Learner and weights are made; adding a kind adds a recipe and a line in `RECIPES`.
With models this small, fastai's per-batch costs are what is left to cut (see `fit_one`).
"""
import ctypes
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial

import fastai
import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from fastai.callback.progress import ProgressCallback
from fastai.collab import collab_learner
from fastai.data.core import DataLoaders
from fastai.callback.core import Callback
from fastai.learner import CastToTensor, Learner, Metric
from fastai.metrics import rmse
from fastai.optimizer import Adam, Optimizer
from fastai.tabular.model import emb_sz_rule, tabular_config
from fastai.torch_core import set_seed

from . import distributed, scoring
from . import nn as hfnn
from .errors import DataError, HfcfError


@dataclass
class ModelSettings:
    """What the book leaves to the user, for one model."""

    epochs: int
    lr: float
    wd: float
    bs: int
    n_factors: int = 0        # dot and topn models
    layers: tuple = ()        # EmbeddingNN hidden layers
    user_size: int = 0        # EmbeddingNN embedding sizes; 0 means fastai's `emb_sz_rule`
    item_size: int = 0
    embed_p: float = 0.0      # EmbeddingNN dropout on the embeddings; topn: on a user's rated titles (training only)
    batchnorm: bool = True    # EmbeddingNN: BatchNorm after each hidden layer (fastai's default); off: Linear biases
    sqr_mom: float = 0.99     # Adam's second-moment decay (beta2); fastai's default is 0.99
    # Rating models: update only the embedding rows a batch touches (`LazyAdam`); `wd` is then an L2 penalty per
    # rating. Off: fastai's Adam over every parameter each step, `wd` decoupled weight decay (as the book).
    lazy: bool = False


# Tuned on MovieLens 100k (a random 15% of u1.base held out; BENCHMARKS.md has the search and the five-fold check).
# Weight decay is decoupled (p *= 1 - lr * wd each step), so its strength goes with lr, epochs and the batch count.
DEFAULTS = {
    "dot": ModelSettings(epochs=6, lr=1e-2, wd=1.0, bs=1024, n_factors=100, sqr_mom=0.9),
    "nn": ModelSettings(epochs=16, lr=2e-2, wd=1.0, bs=4096, layers=(50,), user_size=32, item_size=32, embed_p=0.5),
    # bs counts users, not ratings; wd is an L2 penalty in EASE's units (see TopNRecipe).
    "topn": ModelSettings(epochs=50, lr=3e-3, wd=10.0, bs=128, n_factors=256, embed_p=0.5),
}


# From LARGE_DATA training ratings up, fastai's dense Adam step (every row of every table, each step) costs more than
# the batch itself, so the rating models switch to lazy updates, and every model's batch size follows the data's
# size (LARGE_BATCHES). Tuned on power-law synthetic sets of 1M to 10M ratings with planted taste (bench/scale.py),
# checked on 1M to 25M: BENCHMARKS.md. The switch is well below 1M: on 1M power-law ratings (800k training) the
# 100k recipe caught 45% of the signal past biases with the dot model and none with the nn.
LARGE_DATA = 250_000
LARGE_DEFAULTS = {
    "dot": ModelSettings(epochs=4, lr=3e-2, wd=0.1, bs=0, n_factors=32, sqr_mom=0.9, lazy=True),
    # Dropout on the embeddings cost more accuracy than it saved at this size; the embeddings' L2 does the
    # regularising (lazy: none on the dense layers). Five epochs (share of the signal past biases): at 1M 4 epochs
    # 57%, 5 66%, 6 68%; at 5M 3 62%, 4 75%, 5 77%, 8 72%; at 1M 16 epochs of 8,192 overfit to 40%.
    "nn": ModelSettings(epochs=5, lr=3e-3, wd=0.1, bs=0, layers=(128,), user_size=32, item_size=32, embed_p=0.0,
                        lazy=True),
    # The power-law sets plant taste in ratings, not in which titles a user rates: popularity is all there is to
    # learn there. Held-out precision peaked in the first epochs; 3 equal popularity from 1M to 25M, 10 fell below
    # it at 25M (recall@10 0.111 against 0.121). On sets whose choices follow the taste, 3 epochs beat popularity at
    # 1M and 5M given enough steps (LARGE_BATCHES); 10 at 5M fell back to popularity.
    "topn": ModelSettings(epochs=3, lr=3e-3, wd=10.0, bs=0, n_factors=128, embed_p=0.5),
}
# kind -> (steps an epoch, smallest, largest batch): the batch is the training ratings (top-N: users) / steps, in
# powers of two within the bounds. The dot model's 1/100 was tuned with its other settings (0.6M to 7M). The nn
# learns per step: at 5M, 4 epochs of batches of 32,768 caught 65% of the signal, of 8,192 75%, of 4,096 76%; at
# 1M, 2,048 caught 57% in 4 epochs where 8,192 caught 37%.
# The top-N model's smallest batch was 512 users, which left 1M ratings (7k users) 14 steps an epoch: on a set whose
# users choose titles by the planted taste, 3 epochs then caught nothing past popularity; 64 users a batch gave 12%
# more recall@10 than popularity and 4% more than EASE. At 5M 256 users beat 512 (+10% against +7% on
# popularity); at 10M the rule's 512 beat 256 and 1,024. Without chosen taste (popularity is all there is), 64
# users a batch still equals popularity.
LARGE_BATCHES = {"dot": (100, 8192, 65536), "nn": (400, 1024, 16384), "topn": (100, 64, 8192)}
MIN_STEPS_PER_EPOCH = 16  # the tuned batch sizes give MovieLens 100k 20 to 80 steps an epoch


def defaults_for(n_train, n_users=None, n_items=None):
    """Each model's default settings for `n_train` training ratings (from `n_users` users, of `n_items` titles).

    Up to LARGE_DATA, DEFAULTS with each batch size capped so that `n_train` ratings still make MIN_STEPS_PER_EPOCH
    steps an epoch: the batch sizes were tuned on 80,000 ratings, and on a few thousand they would leave a handful of
    steps in all (the synthetic set's 4,800 training ratings learnt nothing at bs 1,024 and the clusters at bs 300).
    From LARGE_DATA, LARGE_DEFAULTS with the batch sizes of LARGE_BATCHES (the same number of steps, and so of
    penalty and learning-rate schedule, per epoch at every size between the smallest and the largest batch).
    The nn's first layer is narrowed to what a ranking of `n_items` titles can afford (scoring.affordable_width).
    """
    if n_train < LARGE_DATA:
        cap = max(32, n_train // MIN_STEPS_PER_EPOCH)
        chosen = {kind: replace(settings, bs=min(settings.bs, cap)) for kind, settings in DEFAULTS.items()}
    else:
        sizes = {"topn": n_users or n_train // 100}
        chosen = {kind: replace(settings, bs=_batch_size(sizes.get(kind, n_train), *LARGE_BATCHES[kind]))
                  for kind, settings in LARGE_DEFAULTS.items()}
    first, *rest = chosen["nn"].layers
    chosen["nn"] = replace(chosen["nn"], layers=(scoring.affordable_width(first, n_items or 0), *rest))
    return chosen


def _batch_size(n, steps, smallest, largest):
    return int(min(largest, max(smallest, 2 ** round(math.log2(max(n, 1) / steps)))))


def lazy_adam_step(p, lr, mom, sqr_mom, eps, wd, do_wd=True, step=0, grad_avg=None, sqr_avg=None, moments=None,
                   **kwargs):
    """fastai optimizer callback: Adam whose step costs what a batch touched, not the size of the tables.

    For an embedding with a sparse gradient, only the rows the batch looked up are updated ("lazy" Adam, as
    TensorFlow's LazyAdam): their moments and weights move, the others wait for a batch that has them. `wd` is an
    L2 penalty per rating: a touched row's gradient gains `wd * row * (its ratings in the batch / batch size)`,
    the gradient of `wd/2 * mean over the batch of |row|^2`, which does not change with batch or data size.
    A row's two Adam moments sit side by side (`moments`, rows x 2 x width): one gather and one scatter a step.
    A dense parameter (the nn's layers) takes a plain Adam step, with an L2 `wd * p` on its
    gradient where its `do_wd` is on (the nn turns it off: `NeuralRecipe.learner`).
    """
    step += 1
    debias_mom, debias_sqr = 1 - mom ** step, 1 - sqr_mom ** step
    grad = p.grad
    if grad.is_sparse:
        if moments is None:
            moments = p.new_zeros(p.shape[0], 2, p.shape[1])
        looked_up = grad._indices()[0]
        rows, position, counts = _unique_rows(looked_up)
        summed = p.new_zeros(len(rows), p.shape[1]).index_add_(0, position, grad._values())
        # index_select / index_copy_ rather than tensor[rows]: advanced indexing's gather and index_put cost
        # twice as much on CPU, and these rows are unique.
        weights = p.data.index_select(0, rows)
        if do_wd and wd:
            summed.addcmul_(weights, (counts * (wd / len(looked_up))).to(p.dtype)[:, None])
        both = moments.index_select(0, rows)
        avg, sqr = both[:, 0], both[:, 1]
        avg.mul_(mom).add_(summed, alpha=1 - mom)
        sqr.mul_(sqr_mom).addcmul_(summed, summed, value=1 - sqr_mom)
        moments.index_copy_(0, rows, both)
        p.data.index_copy_(0, rows, weights.addcdiv_(avg, (sqr / debias_sqr).sqrt_().add_(eps), value=-lr / debias_mom))
        return {"step": step, "moments": moments}
    if grad_avg is None:
        grad_avg, sqr_avg = torch.zeros_like(p), torch.zeros_like(p)
    if do_wd and wd:
        grad = grad.add(p.data, alpha=wd)
    grad_avg.mul_(mom).add_(grad, alpha=1 - mom)
    sqr_avg.mul_(sqr_mom).addcmul_(grad, grad, value=1 - sqr_mom)
    p.data.addcdiv_(grad_avg, (sqr_avg / debias_sqr).sqrt_().add_(eps), value=-lr / debias_mom)
    return {"step": step, "grad_avg": grad_avg, "sqr_avg": sqr_avg}


_recent_uniques = []  # (rows looked up, their torch.unique) of the last two tables a lazy step updated


def _unique_rows(looked_up):
    """`torch.unique(looked_up, return_inverse=True, return_counts=True)`, computed once for tables a step looks
    up with the same rows: the dot model's factors and biases (half its sorts). A copy of the rows is kept, as a
    sparse gradient's indices may be reused in place."""
    for seen, found in _recent_uniques:
        if seen.shape == looked_up.shape and torch.equal(seen, looked_up):
            return found
    found = torch.unique(looked_up, return_inverse=True, return_counts=True)
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

    When shuffling (training) under torchrun, every rank draws the same order and takes its share of each batch.
    """

    def __init__(self, x, y, bs, shuffle, seed=0, world=distributed.SINGLE):
        self.x, self.y, self.bs, self.shuffle, self.world = x, y, bs, shuffle, world
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self):
        return len(batch_bounds(len(self.x), self.bs, self.shuffle, self.world))

    def __iter__(self):
        if not self.shuffle:
            for start, end in batch_bounds(len(self.x), self.bs, False):
                yield self.x[start:end], self.y[start:end]
            return
        order = torch.randperm(len(self.x), generator=self.generator).to(self.x.device)
        for start, end in batch_bounds(len(self.x), self.bs, True, self.world):
            rows = distributed.shard(order[start:end], self.world)
            yield self.x[rows], self.y[rows]

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


class PrecisionAtK(Metric):
    """Held-out precision@k: of each user's top k titles not rated in training, the share they rated later."""

    def __init__(self, k=10):
        self.k = k

    @property
    def name(self):
        return f"precision@{self.k}"

    def reset(self):
        self.hits, self.users = 0.0, 0

    def accumulate(self, learn):
        items, _, offsets = learn.xb
        targets, owners = learn.yb
        scores = getattr(learn.model, "module", learn.model).scores(learn.pred)  # unwrapped from DDP
        scores[hfnn.bag_owners(offsets, len(items)), items] = -math.inf  # titles rated in training
        relevant = torch.zeros_like(scores, dtype=torch.bool)
        relevant[owners, targets] = True
        top = scores.topk(min(self.k, scores.shape[1]), dim=1).indices  # a catalogue may be smaller than k
        self.hits += float(relevant.gather(1, top).sum())
        self.users += len(offsets)

    @property
    def value(self):
        return self.hits / (self.k * self.users) if self.users else None


class CollabTensorLoaders(DataLoaders):
    """DataLoaders that also answer `collab_learner`'s questions (`classes`, `cat_names`) about the vocab."""

    def __init__(self, train, valid, users, items, n_inp=1):
        super().__init__(train, valid)
        self.classes = {"user": list(users.keys), "title": list(items.keys)}
        self.cat_names, self.n_inp = ["user", "title"], n_inp


class Recipe:
    """How fastai fits one kind of model: its data, its Learner, its saved settings and weights."""

    def encode(self, frame, users, items, y_range):
        """The training or held-out ratings in the form this kind's batches are cut from."""
        raise NotImplementedError

    def loaders(self, train, valid, settings, users, items, seed, world):
        """Training batches (this rank's share of each, under torchrun) and held-out batches (all of them)."""
        raise NotImplementedError

    def learner(self, dls, settings, chosen, y_range):
        raise NotImplementedError

    def resolved(self, settings, users, items):
        """Settings as saved in config.json: only those this kind uses."""
        raise NotImplementedError

    def check(self, settings):
        """Refuse settings of this kind that cannot train (the shared checks are in `check_settings`)."""

    def fit_wd(self, settings, dls):
        """The `wd` that `fit_one_cycle` gets."""
        return settings.wd

    def export(self, learn, train, chosen, n_users):
        """The trained weights under hfcf.nn's key names."""
        raise NotImplementedError


class RatingRecipe(Recipe):
    """The chapter-8 rating models: (user, title) -> rating pairs through fastai's `collab_learner`."""

    def encode(self, frame, users, items, y_range):
        return encode(frame, users, items)

    def loaders(self, train, valid, settings, users, items, seed, world):
        return CollabTensorLoaders(TensorBatches(*train, settings.bs, shuffle=True, seed=seed, world=world),
                                   TensorBatches(*valid, 8192, shuffle=False), users, items)

    def common(self, settings, y_range):
        optimizer = LazyAdam if settings.lazy else Adam
        return dict(y_range=y_range, loss_func=mse, metrics=rmse,
                    opt_func=partial(optimizer, sqr_mom=settings.sqr_mom))

    def collab_learner(self, dls, settings, chosen, y_range):
        """fastai's `collab_learner` for this kind, before its optimizer is made."""
        raise NotImplementedError

    def learner(self, dls, settings, chosen, y_range):
        learn = self.collab_learner(dls, settings, chosen, y_range)
        if settings.lazy:
            sparse_embeddings(learn.model)
        learn.create_opt()
        return learn

    def export(self, learn, train, chosen, n_users):
        return hfnn.from_fastai_keys(self.kind, learn.model.state_dict(), len(chosen.get("layers", ())),
                                     chosen.get("batchnorm", True))


class DotRecipe(RatingRecipe):
    """fastai `EmbeddingDotBias`; the biases are not weight-decayed (as `wd_bn_bias=False` spares biases)."""

    kind = "dot"

    def resolved(self, settings, users, items):
        chosen = asdict(settings)
        for key in ("layers", "user_size", "item_size", "embed_p", "batchnorm"):
            chosen.pop(key)
        return chosen

    def check(self, settings):
        if settings.n_factors < 1:
            raise DataError(f"dot: --factors must be at least 1 (got {settings.n_factors})")

    def learner(self, dls, settings, chosen, y_range):
        learn = super().learner(dls, settings, chosen, y_range)
        for bias in (learn.model.u_bias.weight, learn.model.i_bias.weight):
            learn.opt.state[bias]["do_wd"] = False
        return learn

    def collab_learner(self, dls, settings, chosen, y_range):
        return collab_learner(dls, n_factors=settings.n_factors, **self.common(settings, y_range))


class NeuralRecipe(RatingRecipe):
    """fastai `EmbeddingNN`, its embedding sizes from fastai's `emb_sz_rule` unless given."""

    kind = "nn"

    def resolved(self, settings, users, items):
        chosen = asdict(settings)
        chosen.pop("n_factors")
        chosen["layers"] = list(settings.layers)
        chosen["user_size"] = settings.user_size or emb_sz_rule(len(users))
        chosen["item_size"] = settings.item_size or emb_sz_rule(len(items))
        return chosen

    def check(self, settings):
        if settings.batchnorm and settings.bs < 2:
            raise DataError(f"nn: --bs must be at least 2: its BatchNorm layers need two ratings a batch "
                            f"(got {settings.bs})")
        if not settings.layers or min(settings.layers) < 1:
            raise DataError(f"nn: --layers needs one or more positive sizes, e.g. 100,50 (got {settings.layers})")
        if not 0 <= settings.embed_p < 1:
            raise DataError(f"nn: embedding dropout must be at least 0 and below 1 (got {settings.embed_p})")

    def collab_learner(self, dls, settings, chosen, y_range):
        emb_szs = {"user": chosen["user_size"], "title": chosen["item_size"]}
        config = tabular_config(bn_cont=False, use_bn=settings.batchnorm, embed_p=settings.embed_p)
        learn = collab_learner(dls, use_nn=True, emb_szs=emb_szs, layers=list(settings.layers), config=config,
                               **self.common(settings, y_range))
        fast_dropout(learn.model)
        return learn

    def learner(self, dls, settings, chosen, y_range):
        learn = super().learner(dls, settings, chosen, y_range)
        # The L2 falls on the embeddings only, but for fastai's own recipe (its Adam and BatchNorm, as the book):
        # without BatchNorm an L2 on the dense layers held the nn at the biases, and with lazy updates (whose `wd`
        # is a penalty per rating, on the rows a rating touches) it cost 10 points of signal at 5M (BENCHMARKS.md).
        if settings.lazy or not settings.batchnorm:
            for layer in learn.model.layers.modules():
                if isinstance(layer, torch.nn.Linear):
                    for param in layer.parameters():
                        learn.opt.state[param]["do_wd"] = False
        return learn


class TopNRecipe(Recipe):
    """`TopNModel` in a plain fastai `Learner`: batches of users, `ChoiceLoss`, Adam with L2 on the item vectors.

    `wd` is the L2 penalty as EASE's lambda: the loss is summed over users, so the penalty is divided by the
    number of users and added to the gradients (Adam with `decouple_wd=False`), not decayed from the weights.
    `embed_p` is the chance that a rated title is hidden from a user's input in a training step.
    """

    kind = "topn"
    VALID_USERS = 2000  # held-out precision is a progress signal: a sample of users is enough and stays cheap

    def encode(self, frame, users, items, y_range):
        return Histories.from_frame(frame, users, items, y_range)

    def loaders(self, train, valid, settings, users, items, seed, world):
        rows = torch.nonzero(train.lengths() > 0).flatten()
        held_out = torch.nonzero((valid.lengths() > 0) & (train.lengths() > 0)).flatten()
        if len(held_out) > self.VALID_USERS:
            held_out = held_out[torch.randperm(len(held_out), generator=torch.Generator().manual_seed(seed))]
            held_out = held_out[:self.VALID_USERS].sort().values
        fitting = HistoryBatches(train, train, rows, settings.bs, shuffle=True, seed=seed, world=world)
        return CollabTensorLoaders(fitting, HistoryBatches(train, valid, held_out, 256, shuffle=False), users, items,
                                   n_inp=3)

    def resolved(self, settings, users, items):
        return {key: value for key, value in asdict(settings).items()
                if key in ("epochs", "lr", "wd", "bs", "n_factors", "embed_p", "sqr_mom")}

    def check(self, settings):
        if settings.n_factors < 1:
            raise DataError(f"topn: --factors must be at least 1 (got {settings.n_factors})")
        if not 0 <= settings.embed_p < 1:
            raise DataError(f"topn: history dropout must be at least 0 and below 1 (got {settings.embed_p})")
        if settings.lazy:
            raise DataError("topn: lazy updates are for the rating models (dot, nn), whose embeddings a batch "
                            "touches only in part; leave out --set topn.lazy")

    def learner(self, dls, settings, chosen, y_range):
        model = hfnn.TopNModel(len(dls.classes["user"]), len(dls.classes["title"]), settings.n_factors)
        for table in (model.item_inputs, model.item_outputs):
            torch.nn.init.normal_(table.weight, std=0.01)
        torch.nn.init.zeros_(model.item_bias.weight)
        model.history_dropout = settings.embed_p
        opt_func = partial(Adam, sqr_mom=settings.sqr_mom, decouple_wd=False)
        learn = Learner(dls, model, loss_func=ChoiceLoss(model), opt_func=opt_func, metrics=PrecisionAtK(10))
        learn.create_opt()
        learn.opt.state[model.item_bias.weight]["do_wd"] = False
        return learn

    def fit_wd(self, settings, dls):
        return 2 * settings.wd / max(len(dls.train.rows), 1)  # d/dθ of wd·|θ|²/n_users, as `grad += wd * θ` wants

    def export(self, learn, train, chosen, n_users):
        model = learn.model.eval()
        with torch.no_grad():
            rows = torch.arange(n_users)
            for start in range(0, n_users, 4096):
                model.user_vectors[start:start + 4096] = model.encode(*train.batch(rows[start:start + 4096]))
        return dict(model.state_dict())


RECIPES = {"dot": DotRecipe(), "nn": NeuralRecipe(), "topn": TopNRecipe()}


def resolved_settings(kind, settings, users, items):
    """Settings as saved in config.json (fastai's embedding-size rule applied)."""
    return RECIPES[kind].resolved(settings, users, items)


def check_settings(kind, settings):
    """Refuse settings that cannot train, before any work is done."""
    if settings.epochs < 1:
        raise DataError(f"{kind}: --epochs must be at least 1 (got {settings.epochs})")
    if settings.bs < 1 or not 0 < settings.lr < math.inf or not 0 <= settings.wd < math.inf:
        raise DataError(f"{kind}: --bs and --lr must be positive and --wd not negative "
                        f"(got bs={settings.bs}, lr={settings.lr}, wd={settings.wd})")
    if not 0 < settings.sqr_mom < 1:
        raise DataError(f"{kind}: sqr_mom must lie between 0 and 1 (got {settings.sqr_mom})")
    RECIPES[kind].check(settings)


def _epoch_logger(kind, learn, log):
    """Plain one-line-per-epoch log for non-terminals, where fastprogress's bar floods the output."""
    def write(row):
        names = learn.recorder.metric_names
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
    embeddings) are left out of it and shared out among the ranks, a table to each: after the backward pass every
    rank's lookups and their gradients go to the table's owner, whose step updates the rows looked up, and their
    new values go to every rank after the step (`distributed.to_owners`, `from_owners`). Buffers are not broadcast
    each step: the top-N model's user vectors are filled in after training, and each rank's BatchNorm statistics
    follow its own share (rank 0's are saved). `bytes_per_step` counts what this rank sent.
    """

    def __init__(self, world):
        self.world = world
        self.sent, self.steps = 0, 0

    def before_fit(self):
        self.inner = self.learn.model
        sparse = {id(module.weight) for module in self.inner.modules()
                  if isinstance(module, torch.nn.Embedding) and module.sparse}
        named = [(name, p) for name, p in self.inner.named_parameters() if p.requires_grad]
        self.sparse = [p for _, p in named if id(p) in sparse]
        dense = [p for _, p in named if id(p) not in sparse]
        self.dense_bytes = sum(p.numel() * p.element_size() for p in dense)
        if dense:
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                self.inner, [name for name, p in named if id(p) in sparse])
            device = torch.device(self.world.device)
            self.learn.model = DistributedDataParallel(self.inner, broadcast_buffers=False,
                                                       device_ids=[device] if device.type == "cuda" else None)

    def after_backward(self):
        self.sent += self.dense_bytes
        self.steps += 1
        if self.sparse:
            owned, sent = distributed.to_owners([p.grad for p in self.sparse], self.world)
            for table, p in enumerate(self.sparse):
                p.grad = owned.get(table)  # None: another rank's optimizer updates this table
            self.sent += sent

    def after_step(self):
        if self.sparse:
            # the rows each owned table's step updated: its sort is still in `_unique_rows`'s memory
            updated = {table: (rows, p.data.index_select(0, rows)) for table, p in enumerate(self.sparse)
                       if p.grad is not None for rows in [_unique_rows(p.grad._indices()[0])[0]]}
            received, sent = distributed.from_owners(updated, [p.shape for p in self.sparse], self.world)
            for table, rows, values in received:
                self.sparse[table].data.index_copy_(0, rows, values)
            self.sent += sent

    @property
    def bytes_per_step(self):
        return round(self.sent / self.steps) if self.steps else 0

    def after_fit(self):
        self.learn.model = self.inner


def release_freed_memory():
    """Give the memory that torch and numpy have freed back to the operating system (glibc's `malloc_trim`).

    glibc keeps freed heap pages for reuse, and with tensors of changing sizes coming and going every batch a
    process's resident memory climbs epoch after epoch: the top-N fit on 5M ratings grew 0.1 GB an epoch (5.8 GB
    by its tenth epoch at 10M) and stayed flat with a trim. Does nothing where there is no glibc.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


try:
    _MALLOC_TRIM = getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc's; absent on macOS and musl
except OSError:
    _MALLOC_TRIM = None


class ReleaseFreedMemory(Callback):
    """`release_freed_memory` after every epoch: a few milliseconds, against GBs of retained heap at scale."""

    order = 100

    def after_epoch(self):
        release_freed_memory()


def fit_one(kind, settings, train, valid, users, items, y_range, seed, log=print, world=distributed.SINGLE):
    """Fit one model with fastai's `fit_one_cycle` on data from its recipe's `encode`; refuses a diverged loss.

    Only the callbacks that fitting needs are kept: every callback is called for every event of every batch,
    `CastToTensor` has nothing to cast from plain tensors, and a NaN loss is caught after fitting (the final
    metrics come out non-finite) rather than by `TerminateOnNaNCallback` on each batch. Under torchrun every
    rank runs this with the same seed (so the same initial weights); only rank 0 logs.
    """
    recipe = RECIPES[kind]
    set_seed(seed, reproducible=True)
    dls = recipe.loaders(train, valid, settings, users, items, seed, world).to(torch.device(world.device))
    chosen = recipe.resolved(settings, users, items)
    learn = recipe.learner(dls, settings, chosen, y_range)
    learn.remove_cb(CastToTensor)
    learn.add_cb(ReleaseFreedMemory())
    parallel = DataParallel(world) if world.distributed else None
    if parallel is not None:
        learn.add_cb(parallel)
    if len(dls.valid) == 0:  # --valid-pct 0: nothing held out, so no validation loss or metric to record
        learn.metrics = []
        learn.recorder.valid_metrics = False
    if not world.is_main or not sys.stderr.isatty():
        learn.remove_cb(ProgressCallback)
        learn.logger = _epoch_logger(kind, learn, log if world.is_main else lambda *_: None)
    wd = recipe.fit_wd(settings, dls)
    start = time.perf_counter()
    learn.fit_one_cycle(settings.epochs, settings.lr, wd=wd)
    seconds = time.perf_counter() - start
    history = [[float(v) if v is not None else math.nan for v in values] for values in learn.recorder.values]
    if len(history) < settings.epochs or not math.isfinite(history[-1][0]) or \
            (learn.recorder.valid_metrics and not all(map(math.isfinite, history[-1]))):
        raise HfcfError(f"{kind}: training diverged (the loss became NaN or infinite); lower --lr or raise --wd")
    learn.model.cpu().eval()  # weights saved from the CPU copy: a folder is the same whatever trained it
    state = {key: value.detach().float().clone().contiguous() if value.is_floating_point() else value.clone()
             for key, value in recipe.export(learn, train, chosen, len(users)).items()}
    learn.dls = None  # the Learner is kept for its model; its batches' tensors (GBs at 25M) are not
    return Fitted(kind, state, chosen, round(seconds, 2), history, parallel.bytes_per_step if parallel else 0,
                  learn)


def fit(kinds, settings, train_frame, valid_frame, users, items, y_range, seed, log=print, world=distributed.SINGLE):
    """Fit each model in `kinds` on the same ratings; returns {kind: Fitted}."""
    for kind in kinds:
        check_settings(kind, settings[kind])
        distributed.check_batch(world, kind, settings[kind].bs)
    encodings = [type(RECIPES[kind]).encode for kind in kinds]  # dot and nn share one encoding
    encoded, fitted = {}, {}
    for position, kind in enumerate(kinds):
        encoding = encodings[position]
        if encoding not in encoded:
            encoded[encoding] = tuple(RECIPES[kind].encode(frame, users, items, y_range)
                                      for frame in (train_frame, valid_frame))
        data = encoded[encoding] if encoding in encodings[position + 1:] else encoded.pop(encoding)
        fitted[kind] = fit_one(kind, settings[kind], *data, users, items, y_range, seed, log, world)
        del data  # freed before the next model's data is made (the Learner keeps none of it)
        release_freed_memory()
    return fitted


def fastai_version():
    return fastai.__version__
