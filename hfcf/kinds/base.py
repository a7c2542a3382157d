"""What every model kind is: settings that check themselves, defaults from the data's size, the tensors its weights
file holds, its numpy scorer, its text for the card and the app, and how fastai fits it.

The methods that train import torch and fastai inside themselves: serving reads the registry and never loads them.
"""
import math
from dataclasses import asdict, dataclass, fields, replace
from typing import ClassVar

from ..errors import DataError



@dataclass(frozen=True)
class Settings:
    """What the book leaves to the user, for one model; refused when made if it cannot train."""

    kind: ClassVar[str] = ""
    epochs: int               # a forced count of fit_one_cycle epochs; 0: chosen on an inner held-out slice
    lr: float
    wd: float
    bs: int
    max_epochs: int = 100     # the most epochs the inner slice may choose (when `epochs` is 0)

    def __post_init__(self):
        self.check()

    def check(self):
        if self.epochs < 0 or max(self.epochs, self.max_epochs) < 1:
            raise DataError(f"{self.kind}: --epochs must be at least 1 (got {self.epochs})")
        if self.bs < 1 or not 0 < self.lr < math.inf or not 0 <= self.wd < math.inf:
            raise DataError(f"{self.kind}: --bs and --lr must be positive and --wd not negative "
                            f"(got bs={self.bs}, lr={self.lr}, wd={self.wd})")
        if not 0 < getattr(self, "sqr_mom", 0.5) < 1:  # Adam's beta2, which every kind fitted with Adam has
            raise DataError(f"{self.kind}: sqr_mom must lie between 0 and 1 (got {self.sqr_mom})")

    @classmethod
    def names(cls):
        return tuple(field.name for field in fields(cls))


LARGEST_BATCH = 65536  # past it an epoch takes more steps instead: 25M ratings still fit a step in memory
TUNED_RATINGS = 80_036  # where the rating models' `base` settings were tuned: MovieLens 100k's card split


def follow_the_data(base, n_train):
    """A rating model's `base` settings (tuned on TUNED_RATINGS training ratings) for `n_train` of them: as many
    steps an epoch as where it was tuned (the batch grows with the data, up to LARGEST_BATCH), the learning rate
    scaled by the square root of the batch's growth (Adam's rule; at most 3x, the best measured from 8k to 64k
    ratings a batch; smaller batches keep the tuned rate: a few thousand ratings learnt nothing at a third of it),
    and the decoupled weight decay set so that the decay an epoch (lr x wd x steps) stays what it was where `base`
    was tuned. Smooth in `n_train`: no recipe switches at a size.
    """
    bs = int(min(LARGEST_BATCH, max(32, round(n_train * base.bs / TUNED_RATINGS))))
    lr = base.lr * min(3.0, max(1.0, math.sqrt(bs / base.bs)))
    decay_per_epoch = base.lr * base.wd * TUNED_RATINGS / base.bs
    wd = decay_per_epoch / (lr * max(1.0, n_train / bs))
    return replace(base, bs=bs, lr=float(f"{lr:.3g}"), wd=float(f"{wd:.3g}"))


def positive_int(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_positive(settings, *names):
    """Refuse a saved setting (config.json) in `names` that is not a whole number >= 1."""
    for name in names:
        if not positive_int(settings[name]):
            raise ValueError(f"{name} must be a whole number >= 1 (got {settings[name]!r})")


def float32(*shape):
    return ("float32", shape)


def epochs_text(s):
    """How a model's epochs were chosen, from its config.json entry ("" for folders that do not say)."""
    how = s.get("epochs_chosen")
    if not how:
        return f"{s['epochs']} epochs, as asked for (`--epochs`)" if "epochs_chosen" in s else ""
    tried = ", ".join(f"{epochs}: {figure}" for epochs, figure in how["tried"])
    return (f"{s['epochs']} epochs chosen on {how['on']} ({how['share']:.0%}) held out: one-cycle runs of growing "
            f"length scored by {how['metric']} ({tried}), at most {how['max_epochs']} epochs; then refitted on all "
            "the training data")


def rating_fit(s):
    """The card's words for how a rating model was fitted."""
    if s.get("lazy") and "decay" not in s:  # written before lazy Adam took fastai's decoupled weight decay
        optimizer = "lazy Adam (only the embedding rows a batch touches are updated; wd is an L2 penalty per rating)"
    elif s.get("lazy"):
        optimizer = ("fastai's Adam computed lazily (the embedding rows a batch does not touch catch up when next "
                     "touched)")
    else:
        optimizer = "Adam"
    return (f"`fit_one_cycle({s['epochs']}, {s['lr']}, wd={s['wd']})` with {optimizer} beta2 {s['sqr_mom']}, "
            f"batch size {s['bs']}")


class Kind:
    """One kind of model. Subclasses set the class attributes and the methods marked per kind."""

    name = ""           # config.json's key, the weights file's stem, `--models` and `model=`
    label = ""          # what the app calls it
    architecture = ""   # the module's class, as config.json records it
    Settings = Settings
    Scorer = None       # hfcf.scoring.Scorer subclass: the numpy forward pass over the saved weights
    base = None         # its Settings before `defaults` fits them to the data
    predicts_ratings = True   # scores are ratings on the model's scale (else: how likely a title is chosen)
    encodes_history = False   # a user's scores are a function of their ratings, so fold-in is exact
    has_biases = False        # a per-title bias worth showing (the book's "not your kind of movie" list)
    has_item_vectors = True   # item embeddings for similar titles and the PCA map

    @property
    def score_name(self):
        """The column its scores go in."""
        return "predicted" if self.predicts_ratings else "score"

    @property
    def weights_file(self):
        return f"{self.name}.safetensors"

    def defaults(self, n_train, n_users=None, n_items=None):
        """Default settings for `n_train` training ratings from `n_users` users, of `n_items` titles: `base`, with
        what follows the data's size (batch, penalty) following it smoothly in the kinds that override this."""
        return self.base

    def tensors(self, settings, n_users, n_items):
        """{name: (dtype, shape)} its weights file must hold for these saved settings and vocab sizes; ValueError
        (or KeyError, TypeError) when the settings cannot build the model."""
        raise NotImplementedError

    def scorer(self, weights, y_range):
        return self.Scorer(weights, y_range)

    def settings_text(self, settings):
        """One line for the card and the app on how it was built and trained, from its config.json entry."""
        raise NotImplementedError

    def card_text(self, implicit):
        """The card's bullet on what the model is (Markdown, after "- ")."""
        raise NotImplementedError

    def files_text(self):
        """The card's description of its weights file."""
        raise NotImplementedError

    # --- training: fastai and torch are imported inside these ------------------------------------------------
    def resolved(self, settings, users, items):
        """Settings as saved in config.json (lists for tuples, rules such as fastai's embedding sizes applied)."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(settings).items()}

    def encode(self, frame, users, items, y_range):
        """The training or held-out ratings in the form this kind's batches are cut from."""
        raise NotImplementedError

    def loaders(self, train, valid, settings, users, items, seed, world):
        """Training batches (this rank's share of each, under torchrun) and held-out batches (all of them)."""
        raise NotImplementedError

    def learner(self, dls, settings, chosen, y_range):
        """The fastai Learner, its optimizer made."""
        raise NotImplementedError

    # what the epochs are chosen on (training.search): a recorder metric, its direction, in words
    inner_metric, inner_lower_is_better, inner_description = "valid_loss", True, "a share of the training data"

    def inner_split(self, train, share, rng):
        """(fitted on, held out) of encoded training data, to choose the epochs on."""
        raise NotImplementedError

    def starts_from(self, settings):
        """The name of the kind whose fitted weights this one starts from (`start_from`), or None."""
        return None

    def start_from(self, learn, weights):
        """Set the new Learner's starting weights from the fitted `weights` (our names) of `starts_from`'s kind."""
        raise NotImplementedError

    def inner_size(self, held_out):
        """How much there is to score in `held_out` (0: nothing)."""
        raise NotImplementedError

    def fit_wd(self, settings, dls):
        """The `wd` that `fit_one_cycle` gets."""
        return settings.wd

    def export(self, learn, train, chosen, n_users):
        """The trained weights under the names its scorer reads."""
        raise NotImplementedError

    def reference_module(self, settings, n_users, n_items, y_range):
        """An untrained torch module of this kind from saved settings: the reference its scorer is checked against."""
        raise NotImplementedError

    def reference_scores(self, module, n_users, n_items):
        """(users, items) scores of the torch module: what `Scorer.scores_for` must give."""
        raise NotImplementedError


class RatingKind(Kind):
    """A model of (user, title) -> rating pairs, fitted on pre-encoded tensors with fastai's Adam (or LazyAdam)."""

    inner_metric, inner_description = "rmse", "a random share of the training ratings"

    def resolved(self, settings, users, items):
        # "decay" marks folders whose lazy Adam has fastai's decoupled weight decay (`rating_fit`)
        return {**super().resolved(settings, users, items), "decay": "decoupled"}

    def inner_split(self, train, share, rng):
        import torch

        x, y = train
        order = torch.from_numpy(rng.permutation(len(x)))
        held, kept = order[:int(share * len(x))], order[int(share * len(x)):].sort().values
        return (x[kept], y[kept]), (x[held], y[held])

    def inner_size(self, held_out):
        return len(held_out[0])

    def encode(self, frame, users, items, y_range):
        from .. import training

        return training.encode(frame, users, items)

    def loaders(self, train, valid, settings, users, items, seed, world):
        from ..training import CollabTensorLoaders, TensorBatches

        return CollabTensorLoaders(TensorBatches(*train, settings.bs, shuffle=True, seed=seed, world=world),
                                   TensorBatches(*valid, 8192, shuffle=False), users, items)

    def common(self, settings, y_range):
        """What every rating model's Learner takes: the rating range, the loss, the metric and the optimizer."""
        from functools import partial

        from fastai.metrics import rmse
        from fastai.optimizer import Adam

        from ..training import LazyAdam, mse

        optimizer = LazyAdam if settings.lazy else Adam
        return dict(y_range=y_range, loss_func=mse, metrics=rmse, opt_func=partial(optimizer, sqr_mom=settings.sqr_mom))

    def make_learner(self, dls, settings, chosen, y_range):
        """The fastai Learner for this kind, before its optimizer is made."""
        raise NotImplementedError

    def learner(self, dls, settings, chosen, y_range):
        from ..training import sparse_embeddings

        learn = self.make_learner(dls, settings, chosen, y_range)
        if settings.lazy:
            sparse_embeddings(learn.model)
        learn.create_opt()
        return learn

    def fastai_names(self, chosen):
        """fastai's state-dict key -> ours."""
        raise NotImplementedError

    def export(self, learn, train, chosen, n_users):
        from .. import nn

        return nn.from_fastai_keys(self.name, learn.model.state_dict(), self.fastai_names(chosen))

    def reference_scores(self, module, n_users, n_items):
        import torch

        users, items = torch.arange(n_users).repeat_interleave(n_items), torch.arange(n_items).repeat(n_users)
        with torch.no_grad():
            return module(users, items).reshape(n_users, n_items).numpy()
