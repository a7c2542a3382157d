"""`Recommender`: what a trained model can answer, with torch, safetensors and huggingface_hub only (no fastai)."""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import artifacts, vocab
from .errors import ArtifactError, DataError, HfcfError, UnknownItemError

MODELS = ("dot", "nn")


@dataclass
class FoldIn:
    """A newcomer folded into a trained model: their vector, their predicted ratings and top picks."""

    user_vector: np.ndarray
    predicted: np.ndarray      # one score per item row
    recommendations: pd.DataFrame


def check_n(n, most):
    """`n` as an int in 1..most, else a DataError giving the valid range."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) and not (isinstance(n, float) and n.is_integer()):
        raise DataError(f"n must be a whole number between 1 and {most:,} (got {n!r})")
    if not 1 <= n <= most:
        raise DataError(f"n must be between 1 and {most:,} (got {int(n):,})")
    return int(n)


class Recommender:
    """Predictions, top-N, similar titles and new-user fold-in for one model of a verified model folder."""

    def __init__(self, folder, model="dot", source=None, revision=None):
        model = model or next(kind for kind in MODELS if kind in folder.modules)
        if model not in folder.modules:
            raise HfcfError(f"this repo has no {model!r} model; it has {sorted(folder.modules)}")
        self.folder, self.model, self.module = folder, model, folder.modules[model]
        self.users, self.items, self.config = folder.users, folder.items, folder.config
        self.source, self.revision = source or str(folder.path), revision
        self.low, self.high = folder.y_range
        # Frozen: concurrent fold-ins (app threads) must not race to accumulate gradients into shared weights.
        self.module.requires_grad_(False)
        self._seen, self._rated = {}, {}
        self._ratings = None
        with torch.no_grad():
            embeddings = self.module.item_embeddings.numpy()
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        self._unit_items = embeddings / np.where(norms == 0, 1, norms)
        if model == "dot":  # the dot model is a matrix-vector product: numpy beats torch's per-call overhead
            self._item_factors = self.module.item_factors.weight.detach().numpy()
            self._item_bias = self.module.item_bias.weight.detach().numpy()[:, 0]
            self._user_factors = self.module.user_factors.weight.detach().numpy()
            self._user_bias = self.module.user_bias.weight.detach().numpy()[:, 0]
        else:
            with torch.no_grad():
                self._user_part, self._item_part, self._user_weight = self.module.projections()

    @classmethod
    def from_pretrained(cls, repo_id_or_path, revision=None, model="dot"):
        """Load a local model folder or a Hub repo ("owner/name", "owner/name@rev"), pinned to one commit.

        `model=None` picks the first of MODELS the repo has (`sibling` then gives the other).
        """
        if model is not None and model not in MODELS:
            raise HfcfError(f"model must be one of {MODELS} (got {model!r})")
        text = str(repo_id_or_path)
        path = Path(text).expanduser()
        if path.is_dir():
            return cls(artifacts.load(path), model, source=str(path))
        if path.exists() or text.startswith((".", "/", "~")) or text.count("/") > 1:
            raise ArtifactError(f"{text} is neither a model folder nor a Hub repo id (owner/name[@revision])")
        from . import hub

        folder, commit = hub.download(str(repo_id_or_path), revision)
        repo_id = hub.split_revision(str(repo_id_or_path))[0]
        return cls(artifacts.load(folder), model, source=repo_id, revision=commit)

    def sibling(self, model):
        """The other model of the same folder, sharing the loaded weights."""
        return Recommender(self.folder, model, self.source, self.revision).attach_history(self._ratings)

    # --- history: the dataset's ratings, which never travel with the model -------------------------------
    def attach_history(self, ratings):
        """Remember who rated what (a ratings frame from `hfcf.data`), to exclude seen items and show history."""
        self._ratings = ratings
        self._seen, self._rated = {}, {}  # per user, grouped once: a request must not scan every rating
        if ratings is not None:
            known = ratings[ratings["title"].isin(self.items._exact)]
            for user, rated in known.groupby(known["user"].astype(str)):
                self._rated[user] = (rated["title"].to_numpy(), rated["rating"].to_numpy())
                self._seen[user] = self.items.rows(rated["title"])
        return self

    def history(self, user):
        """What `user` rated in the attached dataset, beside this model's prediction, highest rating first."""
        row = self.users.index(user)
        key = str(self.users.keys[row])
        if key not in self._rated:
            return pd.DataFrame(columns=["title", "rating", "predicted"])
        titles, ratings = self._rated[key]
        predicted = self._scores(row)[self._seen[key]]
        frame = pd.DataFrame({"title": titles, "rating": ratings, "predicted": predicted.round(2)})
        return frame.sort_values(["rating", "predicted"], ascending=False, ignore_index=True)

    # --- scores -----------------------------------------------------------------------------------------
    def _squash(self, raw):
        return self.low + (self.high - self.low) / (1 + np.exp(-raw))

    def _scores(self, user_row):
        """Predicted rating of every item row for one user row."""
        if self.model == "dot":
            raw = self._item_factors @ self._user_factors[user_row] + self._item_bias + self._user_bias[user_row]
            return self._squash(raw)
        with torch.no_grad():
            return self.module.head(self._item_part + self._user_part[user_row]).numpy()

    def predict(self, user, items):
        """Predicted ratings of `user` for each title in `items`."""
        rows = self._item_rows(items)
        return self._scores(self.users.index(user))[rows]

    def predict_all(self):
        """Every user's predicted rating of every item: array (users, items), row/column 0 being `#na#`."""
        if self.model == "dot":
            raw = self._user_factors @ self._item_factors.T + self._user_bias[:, None] + self._item_bias[None]
            return self._squash(raw)
        scores = np.empty((len(self.users), len(self.items)), dtype=np.float32)
        step = max(1, 2**17 // len(self.items))  # users per batch: bounds the MLP's activations to ~100 MB
        with torch.no_grad():
            for start in range(0, len(self.users), step):
                users = self._user_part[start:start + step]
                first = (users[:, None, :] + self._item_part[None]).flatten(0, 1)
                scores[start:start + len(users)] = self.module.head(first).reshape(len(users), -1).numpy()
        return scores

    def recommend(self, user, n=10, exclude=None):
        """Top-`n` titles for `user` with predicted ratings, leaving out what they rated (or `exclude`)."""
        row = self.users.index(user)
        seen = self._item_rows(exclude) if exclude is not None else self._seen.get(str(self.users.keys[row]), [])
        return self._top(self._scores(row), n, seen, "predicted")

    def similar(self, item, n=10):
        """The `n` titles nearest to `item` by cosine similarity of this model's item embeddings."""
        row = self.items.index(item)
        return self._top(self._unit_items @ self._unit_items[row], n, [row], "similarity")

    def search_titles(self, query, limit=10):
        """Titles for a search box: those starting with `query` first, then other matches and close spellings,
        each group most-rated first; the most-rated titles for an empty query."""
        try:
            counts = self._item_counts()
        except HfcfError:
            counts = np.zeros(len(self.items))
        if query is None or not str(query).strip():
            return [self.items.keys[row] for row in np.argsort(-counts[1:], kind="stable")[:limit] + 1]
        start = vocab.normalize_title(query)
        found = self.items.suggest(query, limit=len(self.items))
        rank = {title: (not vocab.normalize_title(title).startswith(start), -counts[self.items.index(title)])
                for title in found}
        return sorted(found, key=rank.__getitem__)[:limit]

    def who_would_like(self, item, n=10):
        """The `n` users predicted to rate `item` highest."""
        n = check_n(n, len(self.users) - 1)
        column = self.items.index(item)
        if self.model == "dot":
            scores = self._squash(self._user_factors @ self._item_factors[column] + self._user_bias
                                  + self._item_bias[column])
        else:
            with torch.no_grad():
                scores = self.module.head(self._user_part + self._item_part[column]).numpy()
        scores[0] = -np.inf
        best = np.argsort(-scores, kind="stable")[:n]
        return pd.DataFrame({"user": [self.users.keys[r] for r in best], "predicted": scores[best].round(3)})

    def item_biases(self):
        """Every title's learnt bias from the dot model, highest first (the book's "not your kind of movie" list)."""
        if "dot" not in self.folder.modules:
            raise HfcfError("item biases come from the dot model, which this repo does not have")
        bias = self.folder.modules["dot"].item_bias.weight.detach().numpy()[1:, 0]
        frame = pd.DataFrame({"title": self.items.keys[1:], "bias": bias.round(4)})
        return frame.sort_values("bias", ascending=False, ignore_index=True)

    def embedding_map(self, n_items=50, components=3, pool=1000):
        """The book's PCA map: the `n_items` most-rated titles on the top principal components of the embeddings.

        Components are fitted on the `pool` most-rated titles; popularity comes from the attached ratings,
        else from `item_counts` in vocab.json.
        """
        counts = self._item_counts()
        n_items = check_n(n_items, len(self.items) - 1)
        if not 1 <= components <= self._unit_items.shape[1]:
            raise DataError(f"components must be between 1 and {self._unit_items.shape[1]} (got {components})")
        order = np.argsort(-counts[1:], kind="stable")[:max(pool, n_items)] + 1
        with torch.no_grad():
            embeddings = self.module.item_embeddings.numpy()[order]
        centered = embeddings - embeddings.mean(axis=0)
        _, _, axes = np.linalg.svd(centered, full_matrices=False)
        coordinates = centered[:n_items] @ axes[:components].T
        frame = pd.DataFrame(coordinates.round(4), columns=[f"pc{i + 1}" for i in range(components)])
        frame.insert(0, "title", [self.items.keys[r] for r in order[:n_items]])
        frame["ratings"] = counts[order[:n_items]].astype(int)
        return frame

    # --- newcomers ----------------------------------------------------------------------------------------
    def fold_in(self, ratings, n=10, l2=1.0):
        """Recommend for someone not in the model from a few `{title: rating}`, without retraining.

        dot: closed-form ridge for a user vector and bias on the fixed item factors and biases, fitted in the
        logit space of the model's sigmoid (the book's "bootstrapping a collaborative filtering model").
        nn: 200 Adam steps on a fresh user embedding (started at the mean user) with the network frozen.
        """
        rows, targets = self._check_fold_in(ratings)
        if self.model == "dot":
            vector = self._ridge_user(rows, targets, l2)
            raw = self._item_factors @ vector[:-1] + vector[-1] + self._item_bias
            predicted = self._squash(raw)
        else:
            vector, predicted = self._fit_user_embedding(rows, targets, l2)
        return FoldIn(vector, predicted, self._top(predicted.copy(), n, rows, "predicted"))

    def _check_fold_in(self, ratings):
        if not ratings:
            raise DataError("rate at least one movie to get recommendations")
        rows, targets, unknown = [], [], []
        for title, rating in dict(ratings).items():
            try:
                rows.append(self.items.index(title))
            except UnknownItemError as err:
                unknown.append(str(err))
                continue
            try:
                value = float(rating)
            except (TypeError, ValueError):
                raise DataError(f"the rating of {str(title)[:80]!r} is {rating!r}, not a number") from None
            if not self.low < value < self.high or not np.isfinite(value):
                raise DataError(f"the rating of {str(title)[:80]!r} is {value}; this model predicts ratings "
                                f"strictly between {self.low:g} and {self.high:g}")
            targets.append(value)
        if unknown:
            raise UnknownItemError(" ".join(unknown))
        if len(set(rows)) != len(rows):
            raise DataError("the same movie is rated twice; rate each movie once")
        return np.array(rows), np.array(targets)

    def _ridge_user(self, rows, targets, l2):
        scaled = (targets - self.low) / (self.high - self.low)
        logits = np.log(scaled / (1 - scaled))
        design = np.hstack([self._item_factors[rows], np.ones((len(rows), 1))])
        penalty = l2 * np.eye(design.shape[1])
        penalty[-1, -1] = 1e-3  # the user bias is barely shrunk: one rating should still move it
        return np.linalg.solve(design.T @ design + penalty, design.T @ (logits - self._item_bias[rows]))

    def _fit_user_embedding(self, rows, targets, l2, steps=200):
        start = self.module.user_embedding.weight.detach()[1:].mean(0)
        vector = start.clone().requires_grad_(True)
        target = torch.as_tensor(targets, dtype=torch.float32)
        item_part = self._item_part[torch.as_tensor(rows)]
        optimizer = torch.optim.Adam([vector], lr=0.05)
        for _ in range(steps):
            optimizer.zero_grad()
            predicted = self.module.head(item_part + vector @ self._user_weight.T)
            loss = ((predicted - target) ** 2).mean() + l2 * 1e-2 * ((vector - start) ** 2).sum()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            predicted = self.module.head(self._item_part + vector @ self._user_weight.T).numpy()
        return vector.detach().numpy(), predicted

    # --- shared helpers --------------------------------------------------------------------------------------
    def _item_rows(self, titles):
        if isinstance(titles, str):
            titles = [titles]
        return np.array([self.items.index(title) for title in titles], dtype=np.int64)

    def _top(self, scores, n, exclude_rows, column):
        """The `n` best item rows by score, leaving out `#na#` and `exclude_rows`."""
        n = check_n(n, len(self.items) - 1)
        scores = np.array(scores, dtype=float, copy=True)
        scores[0] = -np.inf
        scores[np.asarray(exclude_rows, dtype=np.int64)] = -np.inf
        n = min(n, int(np.isfinite(scores).sum()))
        best = np.argpartition(-scores, n - 1)[:n] if n < len(scores) else np.arange(len(scores))
        best = best[np.argsort(-scores[best], kind="stable")]
        return pd.DataFrame({"title": [self.items.keys[r] for r in best], column: scores[best].round(3)})

    def _item_counts(self):
        if self._ratings is not None:
            counts = self._ratings["title"].value_counts()
            return np.array([0] + [counts.get(title, 0) for title in self.items.keys[1:]], dtype=float)
        if self.folder.item_counts is not None:
            return np.asarray(self.folder.item_counts, dtype=float)
        raise HfcfError("the PCA map needs popularity: attach the dataset's ratings (attach_history) "
                        "or use a model folder whose vocab.json has item_counts")
