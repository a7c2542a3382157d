"""The nn kind: fastai's `EmbeddingNN` (chapter 8 of the book), the user and title embeddings concatenated and passed
through a small MLP."""
from dataclasses import dataclass

import numpy as np

from ..errors import DataError
from ..scoring import Scorer, in_parallel
from .base import RatingKind, Settings, check_positive, float32, follow_the_data, positive_int, rating_fit

BATCHNORM_EPS = 1e-5  # torch's BatchNorm1d default, which fastai's layers use
RANKING_BLOCK = 1 << 18  # first-layer activations a ranking holds at once (1 MB: a core's cache)
_NORM_PARTS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


@dataclass(frozen=True)
class NeuralSettings(Settings):
    kind = "nn"
    layers: tuple = (50,)     # hidden layer sizes
    user_size: int = 0        # embedding sizes; 0 means fastai's `emb_sz_rule`
    item_size: int = 0
    embed_p: float = 0.0      # dropout on the embeddings (training only)
    batchnorm: bool = True    # BatchNorm after each hidden layer (fastai's default); off: Linear layers with biases
    warm_start: bool = False  # embeddings start from a dot model's factors fitted on the same ratings
    sqr_mom: float = 0.99     # Adam's second-moment decay (beta2); fastai's default is 0.99
    lazy: bool = True         # fastai's Adam computed for the embedding rows a batch touches (see DotSettings)

    def check(self):
        super().check()
        if self.batchnorm and self.bs < 2:
            raise DataError(f"nn: --bs must be at least 2: its BatchNorm layers need two ratings a batch "
                            f"(got {self.bs})")
        if not self.layers or min(self.layers) < 1:
            raise DataError(f"nn: --layers needs one or more positive sizes, e.g. 100,50 (got {self.layers})")
        if not 0 <= self.embed_p < 1:
            raise DataError(f"nn: embedding dropout must be at least 0 and below 1 (got {self.embed_p})")


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
        activations (RANKING_BLOCK) stay in a core's cache (a third of the time of a whole user's at once)."""
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


class Neural(RatingKind):
    """fastai `EmbeddingNN`, its embedding sizes from fastai's `emb_sz_rule` unless given."""

    name, label, architecture = "nn", "neural net", "EmbeddingNN"
    Settings, Scorer = NeuralSettings, NeuralScorer
    # From random embeddings the nn stayed behind Surprise's SVD++ wherever users have few ratings; started from the
    # dot model's factors (what it learns there is then the rest of the rating) it passed it on every set tried, with
    # a gentler step and no BatchNorm to keep the start (BENCHMARKS.md, Defaults).
    base = NeuralSettings(epochs=0, lr=1e-3, wd=1.0, bs=1024, layers=(64,), user_size=100, item_size=100,
                          batchnorm=False, warm_start=True, lazy=True)
    def starts_from(self, settings):
        return "dot" if settings.warm_start else None

    def start_from(self, learn, weights):
        import torch

        embeddings = learn.model.embeds
        pairs = [(embeddings[0].weight, weights["user_factors.weight"]),
                 (embeddings[1].weight, weights["item_factors.weight"])]
        if any(mine.shape != theirs.shape for mine, theirs in pairs):
            raise DataError(f"nn: warm_start copies the dot model's factors into the embeddings, so user_size and "
                            f"item_size must equal dot's n_factors ({pairs[1][1].shape[1]}); pass them with --set "
                            f"nn.user_size=...,nn.item_size=... or turn it off with --set nn.warm_start=false")
        with torch.no_grad():
            for mine, theirs in pairs:
                mine.copy_(theirs)

    def defaults(self, n_train, n_users=None, n_items=None):
        return follow_the_data(self.base, n_train)

    def tensors(self, settings, n_users, n_items):
        check_positive(settings, "user_size", "item_size")
        layers = settings["layers"]
        if not (isinstance(layers, list) and layers and all(map(positive_int, layers))):
            raise ValueError(f"layers must be a list of whole numbers >= 1 (got {settings['layers']!r})")
        batchnorm = settings.get("batchnorm", True)  # absent from folders written before it was a setting
        if not isinstance(batchnorm, bool):
            raise ValueError(f"batchnorm must be true or false (got {batchnorm!r})")
        sizes = [settings["user_size"] + settings["item_size"], *settings["layers"]]
        found = {"user_embedding.weight": float32(n_users, settings["user_size"]),
                 "item_embedding.weight": float32(n_items, settings["item_size"]),
                 "output.weight": float32(1, sizes[-1]), "output.bias": float32(1)}
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            found[f"hidden.{i}.linear.weight"] = float32(n_out, n_in)
            if batchnorm:
                found.update({f"hidden.{i}.norm.{part}": float32(n_out)
                              for part in ("weight", "bias", "running_mean", "running_var")})
                found[f"hidden.{i}.norm.num_batches_tracked"] = ("int64", ())
            else:
                found[f"hidden.{i}.linear.bias"] = float32(n_out)
        return found

    def settings_text(self, s):
        start = ", started from the dot model's factors" if s.get("warm_start") else ""
        return (f"embeddings {s['user_size']}/{s['item_size']}{start} with dropout {s['embed_p']}, layers "
                f"{s['layers']}{self._layers_note(s)}, {rating_fit(s)}")

    @staticmethod
    def _layers_note(s):
        """Where the L2 falls when it is not fastai's weight decay on every layer (see `learner`)."""
        if not s.get("batchnorm", True):
            return " without BatchNorm (L2 on the embeddings only)"
        return " (L2 on the embeddings only)" if s.get("lazy") and "decay" not in s else ""  # older lazy folders

    def card_text(self, implicit):
        return "**nn** — `EmbeddingNN` (chapter 8): the two embeddings concatenated and passed through a small MLP."

    def files_text(self):
        return "fastai `EmbeddingNN` (embeddings + MLP)"

    # --- training -------------------------------------------------------------------------------------------
    def resolved(self, settings, users, items):
        from fastai.tabular.model import emb_sz_rule

        chosen = super().resolved(settings, users, items)
        chosen["user_size"] = settings.user_size or emb_sz_rule(len(users))
        chosen["item_size"] = settings.item_size or emb_sz_rule(len(items))
        return chosen

    def make_learner(self, dls, settings, chosen, y_range):
        from fastai.collab import collab_learner
        from fastai.tabular.model import tabular_config

        from ..training import fast_dropout

        emb_szs = {"user": chosen["user_size"], "title": chosen["item_size"]}
        config = tabular_config(bn_cont=False, use_bn=settings.batchnorm, embed_p=settings.embed_p)
        learn = collab_learner(dls, use_nn=True, emb_szs=emb_szs, layers=list(settings.layers), config=config,
                               **self.common(settings, y_range))
        fast_dropout(learn.model)
        return learn

    def learner(self, dls, settings, chosen, y_range):
        import torch

        learn = super().learner(dls, settings, chosen, y_range)
        # Without BatchNorm an L2 on the dense layers held the nn at the biases (BENCHMARKS.md): there it falls on
        # the embeddings only.
        if not settings.batchnorm:
            for layer in learn.model.layers.modules():
                if isinstance(layer, torch.nn.Linear):
                    for param in layer.parameters():
                        learn.opt.state[param]["do_wd"] = False
        return learn

    def fastai_names(self, chosen):
        """fastai TabularModel key -> ours (fastai's `EmbeddingNN` is a TabularModel built with `bn_cont=False`)."""
        n_hidden, batchnorm = len(chosen["layers"]), chosen.get("batchnorm", True)
        names = {"embeds.0.weight": "user_embedding.weight", "embeds.1.weight": "item_embedding.weight"}
        for i in range(n_hidden):
            names[f"layers.{i}.0.weight"] = f"hidden.{i}.linear.weight"
            if batchnorm:
                names.update({f"layers.{i}.2.{part}": f"hidden.{i}.norm.{part}" for part in _NORM_PARTS})
            else:
                names[f"layers.{i}.0.bias"] = f"hidden.{i}.linear.bias"
        names.update({f"layers.{n_hidden}.0.weight": "output.weight", f"layers.{n_hidden}.0.bias": "output.bias"})
        return names

    def reference_module(self, settings, n_users, n_items, y_range):
        from ..nn import NeuralModel

        return NeuralModel(n_users, n_items, settings["user_size"], settings["item_size"], settings["layers"], y_range,
                           settings.get("batchnorm", True))
