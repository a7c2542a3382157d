"""One scorer per model kind: what a trained model answers, in numpy over its saved weights; no torch, no fastai.

`Recommender` turns these arrays into tables and `pipeline` scores held-out data with them, so adding a kind
means a torch module in hfcf.nn (training), a scorer here (serving: the same forward pass, and the tensors its
weights file holds) and a line in SCORERS, with no `if kind == ...` elsewhere. Serving without torch keeps the
Space small: torch alone is ~280 MB of resident memory and 2 s of import.
Rating models (dot, nn) score a predicted rating on the model's scale; the top-N model scores how likely a
user is to choose a title next (higher is likelier; not a rating).
"""
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

BATCHNORM_EPS = 1e-5  # torch's BatchNorm1d default, which fastai's layers use
PAIRS_PER_CHUNK = 1 << 18  # pairwise predictions in chunks: bounded memory at millions of held-out ratings
# Scoring every title for one request reads a whole item table (the top-N model's 60k x 128 outputs are 30 MB, its
# unit vectors for `similar` 60 MB), which one core of a busy 2-core box reads in 1.4-9 ms. From this many elements
# (~16k titles x 128) two threads share the work.
PARALLEL_FROM = 1 << 21
THREADS = min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
RANKING_BLOCK = 1 << 18  # first-layer activations an nn ranking holds at once (1 MB: a core's cache)


# The most first-layer activations an nn ranking of the whole catalogue should read (16 MB: a few ms on two threads,
# within a request's budget); training.defaults_for narrows the first layer to fit, never below 64 units, whose cost
# in accuracy is in BENCHMARKS.md, "The nn's width".
NN_RANKING_BUDGET = 1 << 22
NN_NARROWEST = 64


def affordable_width(units, n_items):
    """`units` first-layer units, halved while ranking `n_items` titles would read more than NN_RANKING_BUDGET
    activations and half would still be NN_NARROWEST or more."""
    while units // 2 >= NN_NARROWEST and units * n_items > NN_RANKING_BUDGET:
        units //= 2
    return units


_helpers = None
_helpers_lock = threading.Lock()


def _pool():
    """The helper threads, made on first use (once, whichever request thread gets there first)."""
    global _helpers
    with _helpers_lock:
        if _helpers is None:
            _helpers = ThreadPoolExecutor(max_workers=max(THREADS - 1, 1), thread_name_prefix="hfcf-scoring")
        return _helpers


def _forget_pool():
    global _helpers
    _helpers = None  # a forked child inherits the pool object but none of its threads


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def in_parallel(task, n, size):
    """task(start, end) over 0..n: in THREADS ranges at once when the work reads `size` elements or more (numpy
    releases the GIL in its loops and matrix products), else in one call. The calling thread takes the first
    range itself, so concurrent requests never wait on each other's queued halves with their own thread idle."""
    if THREADS == 1 or size < PARALLEL_FROM:
        task(0, n)
        return
    bounds = np.linspace(0, n, THREADS + 1).astype(int)
    helped = [_pool().submit(task, start, end) for start, end in zip(bounds[1:-1], bounds[2:])]
    task(bounds[0], bounds[1])
    for done in helped:
        done.result()


def matvec(matrix, vector):
    """`matrix @ vector` for one request against a whole table (rows x width), shared out by `in_parallel`."""
    out = np.empty(len(matrix), dtype=np.result_type(matrix, vector))
    in_parallel(lambda start, end: np.matmul(matrix[start:end], vector, out=out[start:end]), len(matrix), matrix.size)
    return out


def rating_weights(ratings, y_range):
    """A rated title's weight in a top-N user vector: its rating on the model's scale, float32 (as in training)."""
    low, high = y_range
    return (np.asarray(ratings, dtype=np.float32) - np.float32(low)) / np.float32(high - low)


class Scorer:
    """The interface every kind provides, on the folder's weights as numpy arrays (`weights`: name -> array, the
    names of hfcf.nn's torch modules). Rows are embedding rows: row 0 (`#na#`) is scored but never shown."""

    predicts_ratings = True
    score_name = "predicted"
    encodes_history = False  # True when a user's scores are a function of their ratings (fold-in is exact)

    def __init__(self, weights, y_range):
        self.low, self.high = y_range

    @staticmethod
    def tensors(settings, n_users, n_items):
        """{name: (dtype, shape)} the weights file must hold for these settings and vocab sizes."""
        raise NotImplementedError

    def user_scores(self, row):
        """Every item row's score for one user row."""
        return self.scores_for(np.array([row]))[0]

    def scores_for(self, rows):
        """(len(rows), items) scores for several user rows."""
        raise NotImplementedError

    def users_for_item(self, column):
        """Every user row's score for one item row."""
        raise NotImplementedError

    def predict(self, user_rows, item_rows):
        """Predicted ratings for paired user and item rows (rating models only)."""
        user_rows, item_rows = np.asarray(user_rows), np.asarray(item_rows)
        out = np.empty(len(user_rows), dtype=np.float32)
        for start in range(0, len(out), PAIRS_PER_CHUNK):
            chunk = slice(start, start + PAIRS_PER_CHUNK)
            out[chunk] = self.pair_scores(user_rows[chunk], item_rows[chunk])
        return out

    def pair_scores(self, user_rows, item_rows):
        raise NotImplementedError

    def fold_in(self, rows, ratings, l2):
        """(user vector, every item row's score) for a newcomer who gave `ratings` to item `rows`."""
        raise NotImplementedError

    def item_vectors(self):
        """The item embeddings that similarity and the PCA map are computed from."""
        raise NotImplementedError

    def squash(self, raw):
        return self.low + (self.high - self.low) / (1 + np.exp(-raw))


def _float(*shape):
    return ("float32", shape)


class DotScorer(Scorer):
    """`EmbeddingDotBias`: a matrix-vector product and two biases through the sigmoid."""

    def __init__(self, weights, y_range):
        super().__init__(weights, y_range)
        self.item_factors = weights["item_factors.weight"]
        self.item_bias = weights["item_bias.weight"][:, 0]
        self.user_factors = weights["user_factors.weight"]
        self.user_bias = weights["user_bias.weight"][:, 0]

    @staticmethod
    def tensors(settings, n_users, n_items):
        factors = settings["n_factors"]
        return {"user_factors.weight": _float(n_users, factors), "item_factors.weight": _float(n_items, factors),
                "user_bias.weight": _float(n_users, 1), "item_bias.weight": _float(n_items, 1)}

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
    """`EmbeddingNN`: concatenated embeddings through Linear -> ReLU -> BatchNorm layers (or Linear with a bias ->
    ReLU, `batchnorm: false`) and a linear output.

    Its first layer is linear in the concatenated embeddings, so it is split into a user part and an item part (with
    the layer's bias), projected once per table: scoring a user against every title is one pass over the item part
    (see `_logit`) plus the rest of the network, and a newcomer's gradient flows only through those small layers.
    BatchNorm in eval mode is an affine map, folded into the next layer's weights and bias: what is left is Linear
    and ReLU.

    Activations are held one column per (user, item) pair, as the projected tables are (width x rows): one user's
    share of the first layer is then a column broadcast down the table's long rows (numpy does that at memory
    speed; a row broadcast over 60k short rows ran at a third of it), and each layer is one matrix product.
    """

    def __init__(self, weights, y_range):
        super().__init__(weights, y_range)
        self.user_embedding = weights["user_embedding.weight"]
        self.item_embedding = weights["item_embedding.weight"]
        # (weight, bias) of each layer after the first, the output last, the previous layer's BatchNorm folded in:
        # W @ (relu(x) * scale + shift) + b == (W * scale) @ relu(x) + (W @ shift + b).
        self.layers = []
        n_hidden = sum(key.endswith(".linear.weight") for key in weights)
        for i in range(1, n_hidden + 1):
            name = f"hidden.{i}.linear" if i < n_hidden else "output"
            weight, bias = weights[f"{name}.weight"], weights.get(f"{name}.bias", np.zeros(1, np.float32))
            if f"hidden.{i - 1}.norm.weight" in weights:
                norm = {part: weights[f"hidden.{i - 1}.norm.{part}"] for part in ("weight", "bias", "running_mean",
                                                                                 "running_var")}
                scale = norm["weight"] / np.sqrt(norm["running_var"] + BATCHNORM_EPS)
                weight, bias = weight * scale, bias + weight @ (norm["bias"] - norm["running_mean"] * scale)
            self.layers.append((weight, bias[:, None]))
        first, first_bias = weights["hidden.0.linear.weight"], weights.get("hidden.0.linear.bias", np.float32(0))
        self.user_weight = first[:, :self.user_embedding.shape[1]]  # (first layer, user embedding size)
        self.user_part = self.user_weight @ self.user_embedding.T  # (first layer, users)
        self.item_part = first[:, self.user_embedding.shape[1]:] @ self.item_embedding.T + np.atleast_1d(
            first_bias)[:, None]  # (first layer, items)

    @staticmethod
    def tensors(settings, n_users, n_items):
        sizes = [settings["user_size"] + settings["item_size"], *settings["layers"]]
        found = {"user_embedding.weight": _float(n_users, settings["user_size"]),
                 "item_embedding.weight": _float(n_items, settings["item_size"]),
                 "output.weight": _float(1, sizes[-1]), "output.bias": _float(1)}
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            found[f"hidden.{i}.linear.weight"] = _float(n_out, n_in)
            if settings.get("batchnorm", True):  # absent from folders written before it was a setting
                found.update({f"hidden.{i}.norm.{part}": _float(n_out)
                              for part in ("weight", "bias", "running_mean", "running_var")})
                found[f"hidden.{i}.norm.num_batches_tracked"] = ("int64", ())
            else:
                found[f"hidden.{i}.linear.bias"] = _float(n_out)
        return found

    def head(self, first):
        """The network from the first Linear's output (user part + item part, one column a pair) to the ratings;
        overwrites `first` (every caller passes a sum made for it) rather than allocating the ReLU's output."""
        return self.squash(self._logit(first)[0])

    def _logit(self, first, shift=None, into=None):
        """The output before the sigmoid, and every hidden layer's ReLU output: what backpropagation needs, as a
        unit passes gradient where its output is positive. The first ReLU is taken into `into`, else in `first`.

        With `shift` (the share of the first layer of one user, or one item: a column), `first` is a slice of the
        other side's table, never written: the first "ReLU output" goes `into` a buffer as max(first, -shift),
        which is relu(first + shift) - shift, so the sum is never formed (the table is read once, by one numpy
        call) and the next layer's bias takes the `+ shift`."""
        assert shift is None or into is not None, "with a shift, `first` is a table: give a buffer"
        hidden = [np.maximum(first, 0 if shift is None else -shift, out=first if into is None else into)]
        for i, (weight, bias) in enumerate(self.layers):
            if i == 0 and shift is not None:
                bias = bias + weight @ shift
            out = weight @ hidden[-1] + bias
            if i < len(self.layers) - 1:
                hidden.append(np.maximum(out, 0, out=out))
        return out[0], hidden

    def _gradient(self, first, target):
        """d/d(first) of the mean squared error of `head(first)` against `target`: backpropagation by hand."""
        logit, hidden = self._logit(first)
        predicted = self.squash(logit)
        sigmoid = (predicted - self.low) / (self.high - self.low)
        grad = ((2 / len(target)) * (predicted - target) * (self.high - self.low) * sigmoid * (1 - sigmoid))[None]
        for (weight, _), below in zip(reversed(self.layers), reversed(hidden)):
            grad = (weight.T @ grad) * (below > 0)
        return grad

    def _ranking(self, table, other):
        """Scores of every column of `table` (the users' or the items' share of the first layer) against one
        column `other` of the other side's share."""
        scores = np.empty(table.shape[1], dtype=np.float32)
        in_parallel(lambda start, end: self._score_range(table, other, scores, start, end), len(scores), table.size)
        return scores

    def _score_range(self, table, other, scores, start, end):
        """Fill scores[start:end]: a block of columns at a time into one reused buffer, whose first-layer
        activations (RANKING_BLOCK) stay in a core's cache. Ranking 10,000 users against 27k titles took 81 s in
        blocks of 14 MB a user, 29 s in cache-sized ones."""
        width = table.shape[0]
        block = max(1, RANKING_BLOCK // width)
        buffer = np.empty((width, min(block, end - start)), dtype=np.float32)
        for low in range(start, end, block):
            high = min(low + block, end)
            scores[low:high] = self.squash(self._logit(table[:, low:high], other, into=buffer[:, :high - low])[0])

    def user_scores(self, row):
        return self._ranking(self.item_part, self.user_part[:, row:row + 1])

    def scores_for(self, rows):
        scores = np.empty((len(rows), self.item_part.shape[1]), dtype=np.float32)
        for i, row in enumerate(rows):
            scores[i] = self.user_scores(row)
        return scores

    def users_for_item(self, column):
        return self._ranking(self.user_part, self.item_part[:, column:column + 1])

    def pair_scores(self, user_rows, item_rows):
        # np.take along the columns: fancy indexing there was 4-5x slower at 262k pairs
        return self.head(np.take(self.user_part, user_rows, axis=1) + np.take(self.item_part, item_rows, axis=1))

    def item_vectors(self):
        return self.item_embedding

    def fold_in(self, rows, ratings, l2, steps=200, lr=0.05, betas=(0.9, 0.999), eps=1e-8):
        """200 Adam steps (torch's update rule) on a fresh user embedding, started at the mean user, with the
        network frozen: the squared error on their ratings plus an L2 pull towards the start."""
        start = self.user_embedding[1:].mean(0)
        vector, target, item_part = start.copy(), np.asarray(ratings, dtype=np.float32), self.item_part[:, rows]
        mean, square = np.zeros_like(vector), np.zeros_like(vector)
        for step in range(1, steps + 1):
            grad = self.user_weight.T @ self._gradient(item_part + (self.user_weight @ vector)[:, None], target).sum(1)
            grad = grad + 2 * l2 * 1e-2 * (vector - start)
            mean = betas[0] * mean + (1 - betas[0]) * grad
            square = betas[1] * square + (1 - betas[1]) * grad * grad
            denominator = np.sqrt(square) / np.sqrt(1 - betas[1] ** step) + eps
            vector = vector - (lr / (1 - betas[0] ** step)) * mean / denominator
        return vector, self._ranking(self.item_part, (self.user_weight @ vector)[:, None])


class TopNScorer(Scorer):
    """`TopNModel`: a user is the normalised, rating-weighted sum of their titles' input vectors.

    So a newcomer is folded in exactly as a known user was encoded (no solve), and what each rated title adds to
    a score is known in closed form: `reason_strengths` gives the reasons for a pick.
    """

    predicts_ratings = False
    score_name = "score"
    encodes_history = True

    def __init__(self, weights, y_range):
        super().__init__(weights, y_range)
        self.inputs = weights["item_inputs.weight"]
        self.outputs = weights["item_outputs.weight"]
        self.bias = weights["item_bias.weight"][:, 0]
        self.user_vectors = weights["user_vectors"]

    @staticmethod
    def tensors(settings, n_users, n_items):
        factors = settings["n_factors"]
        return {"item_inputs.weight": _float(n_items, factors), "item_outputs.weight": _float(n_items, factors),
                "item_bias.weight": _float(n_items, 1), "user_vectors": _float(n_users, factors)}

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


SCORERS = {"dot": DotScorer, "nn": NeuralScorer, "topn": TopNScorer}


def scorer(kind, weights, y_range):
    """The scorer of `kind` on its weights (name -> numpy array; torch tensors from training are converted)."""
    return SCORERS[kind]({name: as_numpy(value) for name, value in weights.items()}, y_range)


def as_numpy(value):
    """A numpy array from a numpy array or a torch tensor (training's state dicts), without importing torch."""
    return value if isinstance(value, np.ndarray) else value.detach().cpu().numpy()
