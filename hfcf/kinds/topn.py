"""The top-N kind: what a user will choose next, from what they chose before (hfcf's `TopNModel`, an item-to-item
autoencoder fitted by a fastai Learner)."""
import math
from dataclasses import dataclass, replace

import numpy as np

from ..errors import DataError
from ..scoring import Scorer, matvec, rating_weights
from .base import Kind, Settings, check_positive, float32


@dataclass(frozen=True)
class TopNSettings(Settings):
    """`bs` counts users, not ratings; `wd` is an L2 penalty in EASE's units (see `TopN`)."""

    kind = "topn"
    n_factors: int = 256
    embed_p: float = 0.0      # the chance that a rated title is hidden from a user's input in a training step
    sqr_mom: float = 0.99     # Adam's second-moment decay (beta2); fastai's default is 0.99

    def check(self):
        super().check()
        if self.n_factors < 1:
            raise DataError(f"topn: --factors must be at least 1 (got {self.n_factors})")
        if not 0 <= self.embed_p < 1:
            raise DataError(f"topn: history dropout must be at least 0 and below 1 (got {self.embed_p})")


class TopNScorer(Scorer):
    """`TopNModel`: a user is the normalised, rating-weighted sum of their titles' input vectors.

    So a newcomer is folded in exactly as a known user was encoded (no solve), and what each rated title adds to
    a score is known in closed form: `reason_strengths` gives the reasons for a pick.
    """

    def __init__(self, weights, y_range):
        super().__init__(weights, y_range)
        self.inputs = weights["item_inputs.weight"]
        self.outputs = weights["item_outputs.weight"]
        self.bias = weights["item_bias.weight"][:, 0]
        self.user_vectors = weights["user_vectors"]

    def scores_for(self, rows):
        return self.user_vectors[rows] @ self.outputs.T + self.bias

    def users_for_item(self, column):
        return self.user_vectors @ self.outputs[column] + self.bias[column]

    def item_vectors(self):
        return np.concatenate([self.inputs, self.outputs], axis=1)

    def weights(self, ratings):
        """A rated title's weight in the user's vector, as in training."""
        return rating_weights(ratings, (self.low, self.high))

    def fold_in(self, rows, ratings, l2=None):
        weights = self.weights(ratings)
        vector = (weights / max(float(np.linalg.norm(weights)), 1e-12)) @ self.inputs[rows]
        scores = matvec(self.outputs, vector)
        scores += self.bias
        return vector, scores

    def reason_strengths(self, history_rows, ratings, pick_rows):
        """(picks, history): how much each pick's score would fall if that rated title were left out of the user's
        ratings, exactly (the normalisation is redone without it), in one product: the reasons for a pick."""
        weights = self.weights(ratings)
        norm = max(float(np.linalg.norm(weights)), 1e-12)
        shares = (self.outputs[pick_rows] @ self.inputs[history_rows].T) * (weights / norm)
        total = shares.sum(axis=1, keepdims=True)
        rest = np.sqrt(np.maximum(norm ** 2 - weights ** 2, 0.0))
        scale = np.divide(norm, rest, out=np.zeros_like(rest), where=rest > 1e-6)  # no title left: no interaction
        return total - (total - shares) * scale


class TopN(Kind):
    """`TopNModel` in a plain fastai `Learner`: batches of users, `ChoiceLoss`, Adam with L2 on the item vectors.

    `wd` is the L2 penalty as EASE's lambda: the loss is summed over users, so the penalty is divided by the
    number of users and added to the gradients (Adam with `decouple_wd=False`), not decayed from the weights.
    """

    name, label, architecture = "topn", "top-N", "TopNModel"
    Settings, Scorer = TopNSettings, TopNScorer
    predicts_ratings = False
    encodes_history = True
    # One recipe at every size, tuned on MovieLens 100k's 943 users; its epochs are chosen by the data, its batch and
    # its penalty follow the users (`defaults`).
    base = TopNSettings(epochs=0, lr=3e-3, wd=10.0, bs=128, n_factors=256, embed_p=0.5)
    TUNED_USERS = 943
    inner_metric, inner_lower_is_better = "ndcg@100", False
    inner_description = "a random share of each user's training titles"
    VALID_USERS = 2000  # held-out precision is a progress signal: a sample of users is enough and stays cheap

    def defaults(self, n_train, n_users=None, n_items=None):
        """The batch follows the users (`batch`), and so does the penalty: the loss sums over users, and the best
        penalty measured on sets of 236 to 15,000 users grew with them (BENCHMARKS.md, ranking), so it is the same
        per user as where it was tuned."""
        users = n_users or max(1, n_train // 100)
        return replace(self.base, bs=self.batch(users), wd=float(f"{self.base.wd * users / self.TUNED_USERS:.3g}"))

    @staticmethod
    def batch(n_users):
        """Users a batch: 4 sqrt(users), so the steps an epoch grow as sqrt(users) too (MovieLens 100k's 943 users:
        123 a batch, 8 steps; 160k users: 1,600, 100 steps): no step in the recipe at any size, and the epochs the
        inner slice chooses fall as each epoch takes more steps."""
        return int(min(8192, max(32, round(4 * math.sqrt(max(n_users, 1))))))

    def tensors(self, settings, n_users, n_items):
        check_positive(settings, "n_factors")
        factors = settings["n_factors"]
        return {"item_inputs.weight": float32(n_items, factors), "item_outputs.weight": float32(n_items, factors),
                "item_bias.weight": float32(n_items, 1), "user_vectors": float32(n_users, factors)}

    def settings_text(self, s):
        return (f"{s['n_factors']} factors, each rated title hidden from a user's input with chance "
                f"{s['embed_p']}, L2 penalty {s['wd']} (EASE's lambda); `fit_one_cycle({s['epochs']}, "
                f"{s['lr']})` with Adam beta2 {s['sqr_mom']}, {s['bs']} users a batch")

    def card_text(self, implicit):
        added = ("chosen title adds its input vector\n  (every choice weighs 1: the data has no ratings)" if implicit
                 else "rated title adds its input vector\n  (weighted by the rating)")
        return ("**topn** — what a user will choose next, from what they chose before: each " + added + " to the "
                "user's vector, whose dot product with a title's output vector, plus the title's bias,\n  scores it. "
                "Trained on \"did this user rate this title\" over the whole catalogue, so it ranks what people "
                "pick rather\n  than how they rate what they picked. The reasons shown for a pick are the rated "
                "titles whose absence would lower its\n  score most, computed exactly.")

    def files_text(self):
        return "hfcf `TopNModel` (item-to-item autoencoder of what users chose, fitted by a fastai Learner)"

    # --- training -------------------------------------------------------------------------------------------
    def encode(self, frame, users, items, y_range):
        from ..training import Histories

        return Histories.from_frame(frame, users, items, y_range)

    def inner_split(self, train, share, rng):
        return train.split(share, rng)

    def inner_size(self, held_out):
        return int(held_out.lengths().count_nonzero())

    def loaders(self, train, valid, settings, users, items, seed, world):
        import torch

        from ..training import CollabTensorLoaders, HistoryBatches

        rows = torch.nonzero(train.lengths() > 0).flatten()
        held_out = torch.nonzero((valid.lengths() > 0) & (train.lengths() > 0)).flatten()
        if len(held_out) > self.VALID_USERS:
            held_out = held_out[torch.randperm(len(held_out), generator=torch.Generator().manual_seed(seed))]
            held_out = held_out[:self.VALID_USERS].sort().values
        fitting = HistoryBatches(train, train, rows, settings.bs, shuffle=True, seed=seed, world=world)
        return CollabTensorLoaders(fitting, HistoryBatches(train, valid, held_out, 256, shuffle=False), users, items,
                                   n_inp=3)

    def learner(self, dls, settings, chosen, y_range):
        from functools import partial

        import torch
        from fastai.learner import Learner
        from fastai.optimizer import Adam

        from ..nn import TopNModel
        from ..training import ChoiceLoss, NDCGAtK

        model = TopNModel(len(dls.classes["user"]), len(dls.classes["title"]), settings.n_factors)
        for table in (model.item_inputs, model.item_outputs):
            torch.nn.init.normal_(table.weight, std=0.01)
        torch.nn.init.zeros_(model.item_bias.weight)
        model.history_dropout = settings.embed_p
        opt_func = partial(Adam, sqr_mom=settings.sqr_mom, decouple_wd=False)
        learn = Learner(dls, model, loss_func=ChoiceLoss(model), opt_func=opt_func, metrics=NDCGAtK(100))
        learn.create_opt()
        learn.opt.state[model.item_bias.weight]["do_wd"] = False
        return learn

    def fit_wd(self, settings, dls):
        return 2 * settings.wd / max(len(dls.train.rows), 1)  # d/dθ of wd·|θ|²/n_users, as `grad += wd * θ` wants

    def export(self, learn, train, chosen, n_users):
        import torch

        model = learn.model.eval()
        with torch.no_grad():
            rows = torch.arange(n_users)
            for start in range(0, n_users, 4096):
                model.user_vectors[start:start + 4096] = model.encode(*train.batch(rows[start:start + 4096]))
        return dict(model.state_dict())

    def reference_module(self, settings, n_users, n_items, y_range):
        from ..nn import TopNModel

        return TopNModel(n_users, n_items, settings["n_factors"])

    def reference_scores(self, module, n_users, n_items):
        import torch

        with torch.no_grad():
            return module.scores(module.user_vectors).numpy()
