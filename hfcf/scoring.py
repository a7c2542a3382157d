"""One scorer per model kind: what a trained module answers, as numpy arrays over embedding rows; no fastai.

`Recommender` turns these arrays into tables and `pipeline` scores held-out data with them, so adding a kind
means a module in hfcf.nn, a scorer here and a line in SCORERS, with no `if kind == ...` elsewhere.
Rating models (dot, nn) score a predicted rating on the model's scale; the top-N model scores how likely a
user is to choose a title next (higher is likelier; not a rating).
"""
import numpy as np
import torch

from .nn import rating_weights


class Scorer:
    """The interface every kind provides. Rows are embedding rows: row 0 (`#na#`) is scored but never shown."""

    predicts_ratings = True
    score_name = "predicted"
    encodes_history = False  # True when a user's scores are a function of their ratings (fold-in is exact)

    def __init__(self, module, y_range):
        self.module, (self.low, self.high) = module, y_range

    def user_scores(self, row):
        """Every item row's score for one user row."""
        return self.scores_for(np.array([row]))[0]

    def scores_for(self, rows):
        """(len(rows), items) scores for several user rows."""
        raise NotImplementedError

    def users_for_item(self, column):
        """Every user row's score for one item row."""
        raise NotImplementedError

    def fold_in(self, rows, ratings, l2):
        """(user vector, every item row's score) for a newcomer who gave `ratings` to item `rows`."""
        raise NotImplementedError

    def item_vectors(self):
        """The item embeddings that similarity and the PCA map are computed from."""
        with torch.no_grad():
            return self.module.item_embeddings.numpy()

    def squash(self, raw):
        return self.low + (self.high - self.low) / (1 + np.exp(-raw))


class DotScorer(Scorer):
    """The dot model is a matrix-vector product: numpy beats torch's per-call overhead at this size."""

    def __init__(self, module, y_range):
        super().__init__(module, y_range)
        self.item_factors = module.item_factors.weight.detach().numpy()
        self.item_bias = module.item_bias.weight.detach().numpy()[:, 0]
        self.user_factors = module.user_factors.weight.detach().numpy()
        self.user_bias = module.user_bias.weight.detach().numpy()[:, 0]

    def scores_for(self, rows):
        raw = self.user_factors[rows] @ self.item_factors.T + self.item_bias + self.user_bias[rows, None]
        return self.squash(raw)

    def users_for_item(self, column):
        return self.squash(self.user_factors @ self.item_factors[column] + self.user_bias + self.item_bias[column])

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


class NeuralScorer(Scorer):
    """EmbeddingNN scored from per-table projections of its first layer (see `NeuralModel.projections`)."""

    def __init__(self, module, y_range):
        super().__init__(module, y_range)
        with torch.no_grad():
            self.user_part, self.item_part, self.user_weight = module.projections()

    def scores_for(self, rows):
        scores = np.empty((len(rows), len(self.item_part)), dtype=np.float32)
        step = max(1, 2**17 // len(self.item_part))  # users per batch: bounds the MLP's activations to ~100 MB
        with torch.no_grad():
            for start in range(0, len(rows), step):
                users = self.user_part[torch.as_tensor(rows[start:start + step])]
                first = (users[:, None, :] + self.item_part[None]).flatten(0, 1)
                scores[start:start + len(users)] = self.module.head(first).reshape(len(users), -1).numpy()
        return scores

    def users_for_item(self, column):
        with torch.no_grad():
            return self.module.head(self.user_part + self.item_part[column]).numpy()

    def fold_in(self, rows, ratings, l2, steps=200):
        """200 Adam steps on a fresh user embedding (started at the mean user) with the network frozen."""
        start = self.module.user_embedding.weight.detach()[1:].mean(0)
        vector = start.clone().requires_grad_(True)
        target = torch.as_tensor(ratings, dtype=torch.float32)
        item_part = self.item_part[torch.as_tensor(rows)]
        optimizer = torch.optim.Adam([vector], lr=0.05)
        for _ in range(steps):
            optimizer.zero_grad()
            predicted = self.module.head(item_part + vector @ self.user_weight.T)
            loss = ((predicted - target) ** 2).mean() + l2 * 1e-2 * ((vector - start) ** 2).sum()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            return vector.detach().numpy(), self.module.head(self.item_part + vector @ self.user_weight.T).numpy()


class TopNScorer(Scorer):
    """`TopNModel`: a user is the normalised, rating-weighted sum of their titles' input vectors.

    So a newcomer is folded in exactly as a known user was encoded (no solve), and what each rated title adds to
    a score is known in closed form: `reason_strengths` gives the reasons for a pick.
    """

    predicts_ratings = False
    score_name = "score"
    encodes_history = True

    def __init__(self, module, y_range):
        super().__init__(module, y_range)
        self.inputs = module.item_inputs.weight.detach().numpy()
        self.outputs = module.item_outputs.weight.detach().numpy()
        self.bias = module.item_bias.weight.detach().numpy()[:, 0]
        self.user_vectors = module.user_vectors.numpy()

    def scores_for(self, rows):
        return self.user_vectors[rows] @ self.outputs.T + self.bias

    def users_for_item(self, column):
        return self.user_vectors @ self.outputs[column] + self.bias[column]

    def weights(self, ratings):
        """A rated title's weight in the user's vector, as in training."""
        return rating_weights(ratings, (self.low, self.high))

    def fold_in(self, rows, ratings, l2=None):
        weights = self.weights(ratings)
        vector = (weights / max(float(np.linalg.norm(weights)), 1e-12)) @ self.inputs[rows]
        return vector, vector @ self.outputs.T + self.bias

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


SCORERS = {"dot": DotScorer, "nn": NeuralScorer, "topn": TopNScorer}


def scorer(kind, module, y_range):
    return SCORERS[kind](module, y_range)
