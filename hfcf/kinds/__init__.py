"""The registry of model kinds: everything that lists kinds (train.py, the model folder, the card, `Recommender`, the
app) reads KINDS. A kind is a module here (see base.Kind) and one entry below; torch and fastai stay out of it."""
import numpy as np

from .base import Kind, Settings
from .dot import Dot
from .nn import Neural
from .topn import TopN

# name -> kind, in the order they are trained and listed in config.json and the card
KINDS = {kind.name: kind for kind in (Dot(), Neural(), TopN())}


def preferred(present=None):
    """The names of the kinds in `present` (default: all), in the order `Recommender(model=None)` picks them: a
    model of what users choose answers "what next" best (BENCHMARKS.md, ranking), then the rating models."""
    names = [name for name in KINDS if present is None or name in present]
    return tuple(sorted(names, key=lambda name: KINDS[name].predicts_ratings))


def rating_names(word="and"):
    """The kinds that predict ratings, as a message names them ("dot and nn")."""
    return f" {word} ".join(name for name, kind in KINDS.items() if kind.predicts_ratings)


def defaults_for(n_train, n_users=None, n_items=None):
    """Each kind's default settings for `n_train` training ratings from `n_users` users, of `n_items` titles."""
    return {name: kind.defaults(n_train, n_users, n_items) for name, kind in KINDS.items()}


def scorer(name, weights, y_range):
    """The scorer of kind `name` on its weights (name -> numpy array; torch tensors from training are converted)."""
    return KINDS[name].scorer({key: as_numpy(value) for key, value in weights.items()}, y_range)


def as_numpy(value):
    """A numpy array from a numpy array or a torch tensor (training's state dicts), without importing torch."""
    return value if isinstance(value, np.ndarray) else value.detach().cpu().numpy()


__all__ = ["KINDS", "Kind", "Settings", "as_numpy", "defaults_for", "preferred", "rating_names", "scorer"]
