"""The dot kind: fastai's `EmbeddingDotBias` (chapter 8 of the book), a user and a title vector whose dot product,
plus a user and a title bias, is squashed into the rating range."""
from dataclasses import dataclass

import numpy as np

from ..errors import DataError
from ..scoring import Scorer
from .base import RatingKind, Settings, check_positive, float32, follow_the_data, rating_fit


@dataclass(frozen=True)
class DotSettings(Settings):
    kind = "dot"
    n_factors: int = 100
    sqr_mom: float = 0.99   # Adam's second-moment decay (beta2); fastai's default is 0.99
    # fastai's Adam with decoupled weight decay either way; lazy: computed for the embedding rows a batch touches
    # (`training.LazyAdam`: the others catch up when next touched), so a step costs the batch, not the tables.
    lazy: bool = True

    def check(self):
        super().check()
        if self.n_factors < 1:
            raise DataError(f"dot: --factors must be at least 1 (got {self.n_factors})")


class DotScorer(Scorer):
    """`EmbeddingDotBias`: a matrix-vector product and two biases through the sigmoid."""

    def __init__(self, weights, y_range):
        super().__init__(weights, y_range)
        self.item_factors = weights["item_factors.weight"]
        self.item_bias = weights["item_bias.weight"][:, 0]
        self.user_factors = weights["user_factors.weight"]
        self.user_bias = weights["user_bias.weight"][:, 0]

    def scores_for(self, rows):
        raw = self.user_factors[rows] @ self.item_factors.T + self.item_bias + self.user_bias[rows, None]
        return self.squash(raw)

    def users_for_item(self, column):
        return self.squash(self.user_factors @ self.item_factors[column] + self.user_bias + self.item_bias[column])

    def pair_scores(self, user_rows, item_rows):
        dot = np.einsum("ij,ij->i", self.user_factors[user_rows], self.item_factors[item_rows])
        return self.squash(dot + self.user_bias[user_rows] + self.item_bias[item_rows])

    def item_vectors(self):
        return self.item_factors

    def item_biases(self):
        return self.item_bias

    def fold_in(self, rows, ratings, l2):
        """Closed-form ridge for a user vector and bias on the fixed item factors and biases, fitted in the logit
        space of the model's sigmoid (the book's "bootstrapping a collaborative filtering model")."""
        scaled = (ratings - self.low) / (self.high - self.low)
        logits = np.log(scaled / (1 - scaled))
        design = np.hstack([self.item_factors[rows], np.ones((len(rows), 1))])
        penalty = l2 * np.eye(design.shape[1])
        penalty[-1, -1] = 1e-3  # the user bias is barely shrunk: one rating should still move it
        vector = np.linalg.solve(design.T @ design + penalty, design.T @ (logits - self.item_bias[rows]))
        return vector, self.squash(self.item_factors @ vector[:-1] + vector[-1] + self.item_bias)


class Dot(RatingKind):
    """fastai `EmbeddingDotBias`; the biases are not weight-decayed (as `wd_bn_bias=False` spares biases)."""

    name, label, architecture = "dot", "dot product", "EmbeddingDotBias"
    Settings, Scorer = DotSettings, DotScorer
    has_biases = True
    # Tuned on MovieLens 100k (a random 15% of u1.base held out; BENCHMARKS.md has the search and the five-fold
    # check); weight decay is decoupled (p *= 1 - lr * wd each step), so `follow_the_data` keeps lr x wd x steps.
    base = DotSettings(epochs=0, lr=1e-2, wd=1.0, bs=1024, n_factors=100, sqr_mom=0.9, lazy=True)

    def defaults(self, n_train, n_users=None, n_items=None):
        return follow_the_data(self.base, n_train)

    def tensors(self, settings, n_users, n_items):
        check_positive(settings, "n_factors")
        factors = settings["n_factors"]
        return {"user_factors.weight": float32(n_users, factors), "item_factors.weight": float32(n_items, factors),
                "user_bias.weight": float32(n_users, 1), "item_bias.weight": float32(n_items, 1)}

    def settings_text(self, s):
        return f"{s['n_factors']} factors, biases not weight-decayed, {rating_fit(s)}"

    def card_text(self, implicit):
        return ("**dot** — `EmbeddingDotBias` (chapter 8 of the fastai book): a user and a movie vector whose dot "
                "product, plus a user and a movie bias, is squashed into the rating range.")

    def files_text(self):
        return "fastai `EmbeddingDotBias` (dot product + biases)"

    # --- training -------------------------------------------------------------------------------------------
    def make_learner(self, dls, settings, chosen, y_range):
        from fastai.collab import collab_learner

        return collab_learner(dls, n_factors=settings.n_factors, **self.common(settings, y_range))

    def learner(self, dls, settings, chosen, y_range):
        learn = super().learner(dls, settings, chosen, y_range)
        for bias in (learn.model.u_bias.weight, learn.model.i_bias.weight):
            learn.opt.state[bias]["do_wd"] = False
        return learn

    def fastai_names(self, chosen):
        return {"u_weight.weight": "user_factors.weight", "i_weight.weight": "item_factors.weight",
                "u_bias.weight": "user_bias.weight", "i_bias.weight": "item_bias.weight"}

    def reference_module(self, settings, n_users, n_items, y_range):
        from ..nn import DotModel

        return DotModel(n_users, n_items, settings["n_factors"], y_range)
