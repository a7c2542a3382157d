"""hfcf's models in plain torch; no fastai.

`DotModel` and `NeuralModel` are the reference implementations of the two chapter-8 rating models: fastai trains
its own `EmbeddingDotBias` and `EmbeddingNN`, and the parity tests check that those weights, renamed by
`from_fastai_keys` (each kind's `fastai_names`), give the same answers here and in the numpy scorers. Their names
(`user_factors`, `hidden.0.linear`, ...) say what each tensor is. `TopNModel` ranks what a user will choose next;
fastai trains it as is.
"""
import torch
import torch.nn.functional as F
from torch import nn


def sigmoid_range(x, low, high):
    """Squash `x` into (low, high), as fastai's `sigmoid_range`."""
    return torch.sigmoid(x) * (high - low) + low


class DotModel(nn.Module):
    """Dot product of user and item factors plus both biases (fastai `EmbeddingDotBias`)."""

    def __init__(self, n_users, n_items, n_factors, y_range):
        super().__init__()
        self.user_factors = nn.Embedding(n_users, n_factors)
        self.item_factors = nn.Embedding(n_items, n_factors)
        self.user_bias = nn.Embedding(n_users, 1)
        self.item_bias = nn.Embedding(n_items, 1)
        self.y_range = tuple(y_range)

    def forward(self, users, items):
        dot = (self.user_factors(users) * self.item_factors(items)).sum(-1)
        raw = dot + self.user_bias(users).squeeze(-1) + self.item_bias(items).squeeze(-1)
        return sigmoid_range(raw, *self.y_range)

    @property
    def item_embeddings(self):
        return self.item_factors.weight


class Hidden(nn.Module):
    """Linear (no bias) -> ReLU -> BatchNorm, fastai's `LinBnDrop(lin_first=True)` without dropout; without
    BatchNorm (`batchnorm=False`), Linear with a bias -> ReLU, as fastai builds it then."""

    def __init__(self, n_in, n_out, batchnorm=True):
        super().__init__()
        self.linear = nn.Linear(n_in, n_out, bias=not batchnorm)
        self.norm = nn.BatchNorm1d(n_out) if batchnorm else nn.Identity()

    def forward(self, x):
        return self.norm(torch.relu(self.linear(x)))


class NeuralModel(nn.Module):
    """Concatenated user and item embeddings through an MLP (fastai `EmbeddingNN`)."""

    def __init__(self, n_users, n_items, user_size, item_size, layers, y_range, batchnorm=True):
        super().__init__()
        self.user_embedding = nn.Embedding(n_users, user_size)
        self.item_embedding = nn.Embedding(n_items, item_size)
        sizes = [user_size + item_size, *layers]
        self.hidden = nn.ModuleList(Hidden(a, b, batchnorm) for a, b in zip(sizes[:-1], sizes[1:]))
        self.output = nn.Linear(sizes[-1], 1)
        self.y_range = tuple(y_range)

    def forward(self, users, items):
        x = torch.cat([self.user_embedding(users), self.item_embedding(items)], dim=-1)
        return self.head(self.hidden[0].linear(x))

    def head(self, first_linear):
        """The rest of the network, from the first Linear's output to the rating."""
        x = self.hidden[0].norm(torch.relu(first_linear))
        for layer in self.hidden[1:]:
            x = layer(x)
        return sigmoid_range(self.output(x).squeeze(-1), *self.y_range)

    def projections(self):
        """Every user's and every item's share of the first Linear, whose output for a pair is their sum.

        The layer is linear in the concatenated embeddings, so projecting each table once turns scoring a
        user against all items into one addition plus `head`, instead of a matrix product per pair.
        """
        user_weight, item_weight = self.hidden[0].linear.weight.split(
            [self.user_embedding.embedding_dim, self.item_embedding.embedding_dim], dim=1)
        item_part = self.item_embedding.weight @ item_weight.T
        if self.hidden[0].linear.bias is not None:  # the bias goes with the item part: still one addition a pair
            item_part = item_part + self.hidden[0].linear.bias
        return self.user_embedding.weight @ user_weight.T, item_part, user_weight

    @property
    def item_embeddings(self):
        return self.item_embedding.weight


def bag_owners(offsets, n_entries):
    """For `F.embedding_bag`'s flat layout: the bag (user) each of the `n_entries` entries belongs to."""
    lengths = torch.diff(offsets, append=offsets.new_tensor([n_entries]))
    return torch.repeat_interleave(torch.arange(len(offsets), device=offsets.device), lengths)


class TopNModel(nn.Module):
    """What a user will choose next, from what they chose before: a low-rank item-to-item autoencoder.

    A user is the rating-weighted, L2-normalised sum of the input vectors of the titles they rated; a title's
    score is that vector's dot product with the title's output vector plus the title's bias. It is trained on
    "did this user rate this title" over the whole catalogue (a squared loss, as EASE and the dropout linear
    autoencoders of Steck 2019/2020), so it learns what people choose, not only how they rate what they chose.
    Being a sum over the history, a score splits exactly into one share per rated title: the reasons for a pick.
    """

    def __init__(self, n_users, n_items, n_factors):
        super().__init__()
        self.item_inputs = nn.Embedding(n_items, n_factors)    # what rating a title says about a user
        self.item_outputs = nn.Embedding(n_items, n_factors)   # who chooses a title
        self.item_bias = nn.Embedding(n_items, 1)
        # Each user's encoded history, filled in after training so known users are scored without their ratings.
        self.register_buffer("user_vectors", torch.zeros(n_users, n_factors))
        self.history_dropout = 0.0  # training only: each rated title is left out of a user's input with this chance

    def encode(self, items, weights, offsets):
        """One vector per user from their rated titles, in `F.embedding_bag`'s flat layout with rating weights."""
        if self.training and self.history_dropout > 0:
            weights = weights * (torch.rand_like(weights) >= self.history_dropout)
        owners = bag_owners(offsets, len(items))
        norms = torch.zeros(len(offsets), device=weights.device).index_add_(0, owners, weights * weights).sqrt()
        scaled = weights / norms.clamp_min(1e-12)[owners]
        return F.embedding_bag(items, self.item_inputs.weight, offsets, mode="sum", per_sample_weights=scaled)

    def forward(self, items, weights, offsets):
        return self.encode(items, weights, offsets)  # the loss scores what it needs (see training.ChoiceLoss)

    def scores(self, vectors):
        """Every title's score for each user vector: (users, items)."""
        return vectors @ self.item_outputs.weight.T + self.item_bias.weight[:, 0]

    @property
    def item_embeddings(self):
        return torch.cat([self.item_inputs.weight, self.item_outputs.weight], dim=1)


def from_fastai_keys(kind, state_dict, names):
    """Rename a fastai state dict to ours (`names`: fastai key -> ours); a key we do not expect is an error, not
    silently dropped."""
    unexpected = sorted(set(state_dict) - set(names))
    if unexpected:
        raise KeyError(f"unexpected fastai {kind} keys {unexpected}; was the model built with bn_cont=False?")
    return {names[key]: value for key, value in state_dict.items()}


def to_fastai_keys(state_dict, names):
    """Rename our state dict to fastai's key names (`names`: fastai key -> ours)."""
    ours = {value: key for key, value in names.items()}
    return {ours[key]: value for key, value in state_dict.items()}
