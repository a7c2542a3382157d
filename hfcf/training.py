"""Fit the chapter-8 models with fastai. The only module that imports fastai.

fastai's tabular DataLoader collates every batch from a DataFrame, which makes an epoch several times slower
than the model itself. `TensorBatches` slices pre-encoded tensors instead; everything else is fastai's own:
`collab_learner`, `fit_one_cycle`, its Adam, Recorder and metrics, `EmbeddingDotBias` and `EmbeddingNN`.
With a model this small, fastai's per-batch costs are what is left to cut (see `fit_one`).
"""
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial

import fastai
import numpy as np
import torch
import torch.nn.functional as F
from fastai.callback.progress import ProgressCallback
from fastai.collab import collab_learner
from fastai.data.core import DataLoaders
from fastai.learner import CastToTensor
from fastai.metrics import rmse
from fastai.optimizer import Adam
from fastai.tabular.model import emb_sz_rule, tabular_config
from fastai.torch_core import set_seed

from . import nn as hfnn
from .errors import DataError, HfcfError


@dataclass
class ModelSettings:
    """What the book leaves to the user, for one model."""

    epochs: int
    lr: float
    wd: float
    bs: int
    n_factors: int = 0        # dot model
    layers: tuple = ()        # EmbeddingNN hidden layers
    user_size: int = 0        # EmbeddingNN embedding sizes; 0 means fastai's `emb_sz_rule`
    item_size: int = 0
    embed_p: float = 0.0      # EmbeddingNN dropout on the embeddings (training only)
    sqr_mom: float = 0.99     # Adam's second-moment decay (beta2); fastai's default is 0.99


# Tuned on MovieLens 100k (a random 15% of u1.base held out; BENCHMARKS.md has the search and the five-fold check).
# Weight decay is decoupled (p *= 1 - lr * wd each step), so its strength goes with lr, epochs and the batch count.
DEFAULTS = {
    "dot": ModelSettings(epochs=6, lr=1e-2, wd=1.0, bs=1024, n_factors=100, sqr_mom=0.9),
    "nn": ModelSettings(epochs=16, lr=2e-2, wd=1.0, bs=4096, layers=(50,), user_size=32, item_size=32, embed_p=0.5),
}


MIN_STEPS_PER_EPOCH = 16  # the tuned batch sizes give MovieLens 100k 20 to 80 steps an epoch


def defaults_for(n_train):
    """DEFAULTS with each batch size capped so that `n_train` ratings still make MIN_STEPS_PER_EPOCH steps an epoch.

    The batch sizes were tuned on 80,000 ratings; on a few thousand they would leave a handful of steps in all
    (the synthetic set's 4,800 training ratings learnt nothing at bs 1,024 and the clusters at bs 300).
    """
    cap = max(32, n_train // MIN_STEPS_PER_EPOCH)
    return {kind: replace(settings, bs=min(settings.bs, cap)) for kind, settings in DEFAULTS.items()}


@dataclass
class Fitted:
    """One trained model: its weights under our key names, the settings that made it and how long it took."""

    kind: str
    state_dict: dict
    settings: dict
    fit_seconds: float
    history: list = field(default_factory=list)
    learner: object = None  # the fastai Learner, kept for parity checks; never saved


class TensorBatches:
    """(x, y) batches sliced from in-memory tensors; fastai's Learner needs only iteration, len and `to`."""

    def __init__(self, x, y, bs, shuffle, seed=0):
        self.x, self.y, self.bs, self.shuffle = x, y, bs, shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self):
        return math.ceil(len(self.x) / self.bs)

    def __iter__(self):
        order = torch.randperm(len(self.x), generator=self.generator) if self.shuffle else None
        for start in range(0, len(self.x), self.bs):
            rows = order[start:start + self.bs] if self.shuffle else slice(start, start + self.bs)
            yield self.x[rows], self.y[rows]

    def to(self, device):
        self.x, self.y = self.x.to(device), self.y.to(device)
        return self


class CollabTensorLoaders(DataLoaders):
    """DataLoaders that also answer `collab_learner`'s questions (`classes`, `cat_names`) about the vocab."""

    def __init__(self, train, valid, users, items):
        super().__init__(train, valid)
        self.classes = {"user": list(users.keys), "title": list(items.keys)}
        self.cat_names, self.n_inp = ["user", "title"], 1


def encode(frame, users, items):
    """(x, y) tensors: x holds (user row, item row) pairs, y the ratings."""
    x = np.stack([users.rows(frame["user"]), items.rows(frame["title"])], axis=1)
    return torch.as_tensor(x, dtype=torch.long), torch.tensor(frame["rating"].to_numpy(), dtype=torch.float32)


def resolved_settings(kind, settings, users, items):
    """Settings with fastai's embedding-size rule applied, as saved in config.json."""
    chosen = asdict(settings)
    if kind == "dot":
        for key in ("layers", "user_size", "item_size", "embed_p"):
            chosen.pop(key)
    else:
        chosen.pop("n_factors")
        chosen["layers"] = list(settings.layers)
        chosen["user_size"] = settings.user_size or emb_sz_rule(len(users))
        chosen["item_size"] = settings.item_size or emb_sz_rule(len(items))
    return chosen


def check_settings(kind, settings):
    """Refuse settings that cannot train, before any work is done."""
    if settings.epochs < 1:
        raise DataError(f"{kind}: --epochs must be at least 1 (got {settings.epochs})")
    if settings.bs < 1 or not 0 < settings.lr < math.inf or not 0 <= settings.wd < math.inf:
        raise DataError(f"{kind}: --bs and --lr must be positive and --wd not negative "
                        f"(got bs={settings.bs}, lr={settings.lr}, wd={settings.wd})")
    if kind == "dot" and settings.n_factors < 1:
        raise DataError(f"dot: --factors must be at least 1 (got {settings.n_factors})")
    if kind == "nn" and (not settings.layers or min(settings.layers) < 1):
        raise DataError(f"nn: --layers needs one or more positive sizes, e.g. 100,50 (got {settings.layers})")
    if kind == "nn" and not 0 <= settings.embed_p < 1:
        raise DataError(f"nn: embedding dropout must be at least 0 and below 1 (got {settings.embed_p})")
    if not 0 < settings.sqr_mom < 1:
        raise DataError(f"{kind}: sqr_mom must lie between 0 and 1 (got {settings.sqr_mom})")


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


def _learner(kind, settings, chosen, dls, y_range):
    """fastai's `collab_learner` for `kind`, with only the callbacks that fitting needs.

    Every callback is called for every event of every batch, so each one costs time whether or not it acts:
    `CastToTensor` has nothing to cast from plain tensors, and a NaN loss is caught after fitting (the final
    metrics come out non-finite) rather than by `TerminateOnNaNCallback` on each batch.
    """
    common = dict(y_range=y_range, loss_func=mse, metrics=rmse, opt_func=partial(Adam, sqr_mom=settings.sqr_mom))
    if kind == "dot":
        learn = collab_learner(dls, n_factors=settings.n_factors, **common)
    else:
        emb_szs = {"user": chosen["user_size"], "title": chosen["item_size"]}
        config = tabular_config(bn_cont=False, embed_p=settings.embed_p)
        learn = collab_learner(dls, use_nn=True, emb_szs=emb_szs, layers=list(settings.layers), config=config, **common)
        fast_dropout(learn.model)
    learn.remove_cb(CastToTensor)
    learn.create_opt()
    if kind == "dot":  # biases are not decayed, as fastai's `wd_bn_bias=False` spares linear and BatchNorm biases
        for bias in (learn.model.u_bias.weight, learn.model.i_bias.weight):
            learn.opt.state[bias]["do_wd"] = False
    return learn


def fit_one(kind, settings, train, valid, users, items, y_range, seed, log=print):
    """Fit one model with fastai's `collab_learner` and `fit_one_cycle`; refuses a diverged (NaN) loss."""
    set_seed(seed, reproducible=True)
    dls = CollabTensorLoaders(TensorBatches(*train, settings.bs, shuffle=True, seed=seed),
                              TensorBatches(*valid, 8192, shuffle=False), users, items)
    chosen = resolved_settings(kind, settings, users, items)
    learn = _learner(kind, settings, chosen, dls, y_range)
    if not sys.stderr.isatty():
        learn.remove_cb(ProgressCallback)
        learn.logger = _epoch_logger(kind, learn, log)
    start = time.perf_counter()
    learn.fit_one_cycle(settings.epochs, settings.lr, wd=settings.wd)
    seconds = time.perf_counter() - start
    history = [[float(v) for v in values] for values in learn.recorder.values]
    if len(history) < settings.epochs or not all(map(math.isfinite, history[-1])):
        raise HfcfError(f"{kind}: training diverged (the loss became NaN or infinite); lower --lr or raise --wd")
    learn.model.eval()
    n_hidden = len(settings.layers) if kind == "nn" else 0
    state = {key: value.detach().float().clone().contiguous() if value.is_floating_point() else value.clone()
             for key, value in hfnn.from_fastai_keys(kind, learn.model.state_dict(), n_hidden).items()}
    return Fitted(kind, state, chosen, round(seconds, 2), history, learn)


def fit(kinds, settings, train_frame, valid_frame, users, items, y_range, seed, log=print):
    """Fit each model in `kinds` on the same encoded data; returns {kind: Fitted}."""
    for kind in kinds:
        check_settings(kind, settings[kind])
    train, valid = encode(train_frame, users, items), encode(valid_frame, users, items)
    return {kind: fit_one(kind, settings[kind], train, valid, users, items, y_range, seed, log) for kind in kinds}


def fastai_version():
    return fastai.__version__
