"""`Recommender`: what a trained model can answer, with numpy, pandas, safetensors and huggingface_hub only (no torch,
no fastai, no pickle)."""
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import artifacts, data, scoring, vocab
from .errors import ArtifactError, DataError, HfcfError, UnknownItemError
from .kinds import KINDS, preferred, rating_names, scorer

REASONS = 2  # titles of the user's own history named as the reason for a pick
MAX_FOLD_IN = 500  # a newcomer's ratings: more is no newcomer, and each costs a title look-up
# The rating models' fold-in shrinkage: below, one rating's ridge solve is near-singular; above, the newcomer is the
# average user already, and the nn's penalty gradient overflows float32 long before l2 = 1e300.
L2_RANGE = (1e-4, 1e4)


@dataclass
class FoldIn:
    """A newcomer folded into a trained model: their vector, their predicted ratings and top picks."""

    user_vector: np.ndarray
    predicted: np.ndarray      # one score per item row (the ranking model's scores)
    recommendations: pd.DataFrame


class History:
    """The dataset's ratings (which never travel with a model) grouped by user once, for every model of a folder.

    A user's rated item rows and ratings are one slice of two arrays sorted by user row: attaching millions of
    ratings is one sort rather than a loop over users, and a request reads its slice. Ratings of users or titles
    the model does not know are left out.
    """

    def __init__(self, ratings, users, items, implicit=False):
        ratings = ratings.ratings if isinstance(ratings, data.Dataset) else ratings
        user_column, title_column, values = _ratings_columns(ratings, implicit)
        user_rows = users.rows(user_column, unknown_as_na=True)
        if not user_rows.all():  # ids written otherwise than training read them ("007", 7.0): read them as it did
            user_rows = users.rows(data.ids_as_trained(user_column), unknown_as_na=True)
        item_rows = items.rows(title_column, unknown_as_na=True)
        known = (user_rows > 0) & (item_rows > 0)
        if not known.any():
            keyed = "" if "title" in getattr(ratings, "columns", ()) else (
                " (this frame's items were matched by their ids, as titles of items without one; a model trained "
                "with titles needs the frame's title column, as hfcf.data.load(...).ratings has)")
            raise DataError(f"none of the {len(values):,} ratings is of a user and a title this model knows "
                            f"({users.describe()}; titles such as {items.keys[1]!r}){keyed}: attach the ratings the "
                            "model was trained on")
        if not known.all():  # the model's own ratings are all known: no masked copies of 25M rows
            user_rows, item_rows, values = user_rows[known], item_rows[known], values[known]
        del known
        order = _stable_order(user_rows)
        if order is not None:  # None: already grouped by user (MovieLens's files), and no 100 MB copies
            user_rows, item_rows, values = user_rows[order], item_rows[order], values[order]
        self.users, self.items = users, items
        self.item_rows, self.values = item_rows, values
        self.offsets = np.searchsorted(user_rows, np.arange(len(users) + 1))  # user row r: [r, r + 1)

    def check_fits(self, users, items):
        """Raise a DataError unless this history was grouped for these vocabularies (its rows are their rows)."""
        if (self.users is users or self.users.keys == users.keys) and (self.items is items
                                                                       or self.items.keys == items.keys):
            return
        raise DataError(f"this History was grouped for another model ({len(self.users) - 1:,} users, "
                        f"{len(self.items) - 1:,} titles; this one has {len(users) - 1:,} users, {len(items) - 1:,} "
                        "titles): attach the ratings frame itself, or History(ratings, recommender.users, "
                        "recommender.items)")

    def of(self, user_row):
        """(item rows, ratings) the user gave, in the dataset's order; None when they rated nothing here."""
        start, end = self.offsets[user_row], self.offsets[user_row + 1]
        return (self.item_rows[start:end], self.values[start:end]) if end > start else None


def _ratings_columns(ratings, implicit=False):
    """(user, title, rating) columns of a ratings frame (or the `hfcf.data.Dataset` holding one), the ratings as
    finite numbers, else a DataError. Titles come from a title column, else from item ids as training titled items
    without one. Data without ratings (`implicit`) needs no rating column: every choice is data.IMPLICIT_RATING, as
    in training."""
    if not isinstance(ratings, pd.DataFrame):
        raise DataError(f"history takes a ratings frame (columns user, title or item, rating, as hfcf.data.load(...)"
                        f".ratings has), a History of this model, or None (got {type(ratings).__name__})")
    found = ", ".join(map(str, ratings.columns))[:200]
    if "title" not in ratings.columns and "item" not in ratings.columns:
        raise DataError(f"the ratings frame has neither a 'title' nor an 'item' column (columns found: {found}); "
                        "name the column of item ids 'item', or pass hfcf.data.load(...).ratings")
    missing = [column for column in ("user", *(() if implicit else ("rating",))) if column not in ratings.columns]
    if missing:
        raise DataError(f"the ratings frame has no column {missing[0]!r} (columns found: {found}); name that column "
                        f"{missing[0]!r}, or pass hfcf.data.load(...).ratings")
    users = ratings["user"]
    titles = ratings["title"] if "title" in ratings.columns else data.titles_as_trained(ratings["item"])
    if implicit:
        return users, titles, np.full(len(ratings), data.IMPLICIT_RATING, dtype=np.float32)
    values = ratings["rating"].to_numpy()
    if values.dtype.kind not in "iuf":
        raise DataError(f"the ratings frame's rating column holds {values.dtype} values, not numbers; pass "
                        "hfcf.data.load(...).ratings, which reads them as numbers")
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        bad = int(np.flatnonzero(~np.isfinite(values))[0])
        raise DataError(f"the ratings frame has {int((~np.isfinite(values)).sum()):,} missing or infinite ratings "
                        f"(the first in row {bad:,}); drop them (ratings.dropna(subset=['rating'])) or pass "
                        "hfcf.data.load(...).ratings, which refuses them")
    return users, titles, values


def _stable_order(keys):
    """`np.argsort(keys, kind="stable")` for keys in 0..2**32: two 16-bit radix passes, twice as fast at 25M rows
    (numpy radix-sorts only 16-bit keys); None when the keys are already in order (ratings grouped by user, as
    MovieLens's are): nothing to sort or gather."""
    if len(keys) == 0 or (keys[1:] >= keys[:-1]).all():
        return None
    low = np.argsort((keys & 0xFFFF).astype(np.uint16), kind="stable")
    if len(keys) < 2**31:
        low = low.astype(np.int32)  # half argsort's int64: 100 MB less at 25M ratings
    return low[np.argsort((keys[low] >> 16).astype(np.uint16), kind="stable")]


def check_n(n, most, name="n"):
    """`n` as an int in 1..most (at least 1 when `most` is None), else a DataError giving the valid range."""
    valid = f"between 1 and {most:,}" if most is not None else "at least 1"
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) and not (isinstance(n, float) and n.is_integer()):
        raise DataError(f"{name} must be a whole number {valid} (got {repr(n)[:40]})")
    if not 1 <= n <= (most if most is not None else n):
        raise DataError(f"{name} must be {valid} (got {int(n):,})")
    return int(n)


def check_l2(l2):
    """`l2` as a float within L2_RANGE, else a DataError giving the range."""
    low, high = L2_RANGE
    if isinstance(l2, bool) or not isinstance(l2, (int, float, np.integer, np.floating)) or not low <= l2 <= high:
        raise DataError(f"l2 must be a number between {low:g} and {high:g} (got {repr(l2)[:40]}); the default, 1, "
                        "suits a few ratings")
    return float(l2)


def _local(text):
    """(path, "folder" | "missing" | "repo id") for what `text` names, after recovering an interrupted write there;
    an ArtifactError when the file system refuses the path itself (a NUL byte, a name too long)."""
    try:
        path = Path(text).expanduser()
        artifacts.recover(path)  # an interrupted train.py may have left its new model inside, to put in place
        if path.is_dir():
            return path, "folder"
        local = (path.exists() or text.startswith((".", "/", "~")) or text.count("/") != 1
                 or Path(text.split("/")[0]).is_dir())  # "models/smal" beside a models/ folder is a path
        return (path.resolve(), "missing") if local else (path, "repo id")
    except (OSError, ValueError, RuntimeError) as err:  # RuntimeError: "~nobody" has no home directory
        reason = getattr(err, "strerror", None) or err
        raise ArtifactError(f"cannot read {text[:80]!r} as a model folder ({reason}): pass a model folder's path "
                            "or a Hub repo id (owner/name[@revision])") from None


def _pairs(ratings, implicit=False):
    """A newcomer's ratings as a list of (title, rating) pairs, from a mapping (a dict, a Series) or pairs; for a
    model of data without ratings (`implicit`) also from a list of the titles chosen, each rated IMPLICIT_RATING."""
    if ratings is None:
        return []
    if isinstance(ratings, (Mapping, pd.Series)):
        return list(ratings.items())
    usage = "give {title: rating} or a list of (title, rating) pairs"
    if implicit:
        usage = "give a list of the titles chosen"
    if isinstance(ratings, (str, bytes, pd.DataFrame)) or not isinstance(ratings, Iterable):
        raise DataError(f"a newcomer's ratings are {type(ratings).__name__} {str(ratings)[:40]!r}: {usage}")
    pairs = list(ratings)
    if len(pairs) > MAX_FOLD_IN:
        return pairs  # refused for their number before any is read
    return [_pair(pair, usage, implicit) for pair in pairs]


def _pair(pair, usage, implicit=False):
    if implicit and isinstance(pair, str):
        return pair, data.IMPLICIT_RATING
    if not isinstance(pair, (str, bytes)) and isinstance(pair, Iterable):
        pair = tuple(pair)
        if len(pair) == 2:
            return pair
    raise DataError(f"{str(pair)[:60]!r} is not a (title, rating) pair: {usage}")


class Recommender:
    """Top-N picks with reasons, predicted ratings, similar titles and new-user fold-in for one model of a
    verified model folder. `model` names the kind that ranks; a model that does not predict ratings borrows the
    folder's rating model (the first in `kinds.preferred` order) for the predicted ratings shown beside its picks."""

    def __init__(self, folder, model=None, source=None, revision=None):
        present = preferred(folder.weights)
        model = model or present[0]
        if model not in folder.weights:
            why = (f" (it was trained on data without ratings, and {rating_names()} need ratings)"
                   if folder.config["dataset"].get("implicit") else "")
            raise DataError(f"this repo has no {str(model)[:40]!r} model; it has {sorted(folder.weights)}{why}: pass "
                            f"model={present[0]!r}, or leave model out")
        self.folder, self.model, self.kind = folder, model, KINDS[model]
        self.users, self.items, self.config = folder.users, folder.items, folder.config
        self.source, self.revision = source or str(folder.path), revision
        self.low, self.high = folder.y_range
        self.scorer = scorer(model, folder.weights[model], folder.y_range)
        rating_kind = model if self.kind.predicts_ratings else next(
            (kind for kind in present if KINDS[kind].predicts_ratings), None)
        self.rating_model = rating_kind  # the kind behind the "predicted" column, or None
        self.rating = (self.scorer if rating_kind == model else
                       scorer(rating_kind, folder.weights[rating_kind], folder.y_range) if rating_kind else None)
        self.bias_model = next((kind for kind in present if KINDS[kind].has_biases), None)  # item_biases' kind
        self.implicit = bool(self.config["dataset"].get("implicit"))  # trained on who chose what, not ratings
        self._history = None
        self._counts = None
        self._axes = None  # the embedding map's PCA, computed once
        self._floor = None  # similar()'s default minimum count of ratings
        self._unit_items = None
        if self.kind.has_item_vectors:
            embeddings = self.scorer.item_vectors()
            norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
            self._unit_items = embeddings / np.where(norms == 0, 1, norms)

    @classmethod
    def from_pretrained(cls, repo_id_or_path, revision=None, model=None, force_download=False):
        """Load a local model folder or a Hub repo ("owner/name", "owner/name@rev"), pinned to one commit.

        `force_download=True` fetches the repo's files again even when they are cached (a damaged cache).

        `model=None` picks the first kind the repo has in `kinds.preferred` order (a model of what users choose,
        when there is one); `sibling` gives another kind of the same folder.
        """
        if model is not None and model not in preferred():  # a tuple: any value may be asked about
            raise HfcfError(f"model must be one of {preferred()} (got {model!r})")
        text = str(repo_id_or_path).strip()
        if not text:
            raise ArtifactError("no model given: pass a model folder or a Hub repo id (owner/name[@revision])")
        path, place = _local(text)
        if place == "folder":
            return cls(artifacts.load(path), model, source=str(path))
        if place == "missing":
            raise ArtifactError(f"{text} is neither a model folder nor a Hub repo id (owner/name[@revision]): there "
                                f"is no folder {path}; check the path")
        from . import hub

        folder, commit = hub.download(text, revision, force_download=force_download)
        repo_id = hub.split_revision(text)[0]
        try:
            loaded = artifacts.load(folder)
        except ArtifactError as err:
            raise ArtifactError(f"{err}. This is the local cache of {repo_id}@{commit}: fetch it again with "
                                f"from_pretrained({text!r}, force_download=True), or delete {folder}") from None
        return cls(loaded, model, source=repo_id, revision=commit)

    def sibling(self, model):
        """Another model of the same folder, sharing the loaded weights and the attached history."""
        return Recommender(self.folder, model, self.source, self.revision).attach_history(self._history)

    # --- history: the dataset's ratings, which never travel with the model -------------------------------
    def attach_history(self, ratings):
        """Remember who rated what (`hfcf.data.load(...)` or its ratings frame; a frame of user, item and rating, its
        ids as in the file; or a `History` of this folder to share one): seen titles are left out of picks, the
        history is shown, and the top-N model names the rated titles behind each pick. None detaches it. A model
        of data without ratings needs no rating column: every choice weighs 1, as in training."""
        self._counts = self._axes = self._floor = None  # popularity may now come from these ratings
        if isinstance(ratings, History):
            ratings.check_fits(self.users, self.items)
        if ratings is None or isinstance(ratings, History):
            self._history = ratings
        else:
            self._history = History(ratings, self.users, self.items, self.implicit)
        return self

    def _rated(self, row):
        """(item rows, ratings) of user `row` in the attached history, or None."""
        return self._history.of(row) if self._history is not None else None

    def history(self, user):
        """What `user` rated in the attached dataset, beside the rating model's prediction (when the folder has a
        rating model), highest rating first; for a model of data without ratings, the titles they chose."""
        row = self.users.index(user)
        rated = self._rated(row)
        if rated is None:
            return pd.DataFrame(columns=["title"] if self.implicit else ["title", "rating", "predicted"])
        rows, ratings = rated
        if self.implicit:  # every rating is 1: the titles are all there is to show
            return pd.DataFrame({"title": [self.items.keys[r] for r in rows]})
        frame = pd.DataFrame({"title": [self.items.keys[r] for r in rows], "rating": ratings.astype(float)})
        if self.rating is None:  # a folder with a top-N model only: nothing predicts ratings
            return frame.sort_values("rating", ascending=False, ignore_index=True)
        frame["predicted"] = self._predicted(row, rows).round(2)
        return frame.sort_values(["rating", "predicted"], ascending=False, ignore_index=True)

    # --- scores -----------------------------------------------------------------------------------------
    def _rating_scorer(self):
        if self.rating is None:
            why = " (it was trained on data without ratings)" if self.implicit else ""
            raise DataError(f"predicted ratings come from a {rating_names('or')} model, and this repo has only "
                            f"{', '.join(sorted(self.folder.weights))}{why}; rank titles with recommend() or "
                            "similar() instead")
        return self.rating

    def _scores(self, user_row):
        """The ranking model's score of every item row for one user row."""
        return self.scorer.user_scores(user_row)

    def _predicted(self, user_row, item_rows):
        """The rating model's predictions for one user row and a few item rows: those pairs, not every title."""
        return self._rating_scorer().predict(np.full(len(item_rows), user_row), item_rows)

    def predict(self, user, items):
        """Predicted ratings of `user` for each title in `items` (from the rating model)."""
        rows = self._item_rows(items)
        return self._predicted(self.users.index(user), rows)

    def predict_all(self):
        """Every user's predicted rating of every item: array (users, items), row/column 0 being `#na#`."""
        return self._rating_scorer().scores_for(np.arange(len(self.users)))

    def recommend(self, user, n=10, exclude=None):
        """Top-`n` titles for `user`, leaving out what they rated (or `exclude`).

        Columns: title; the ranking model's score ("predicted" for a rating model, else "score"); "predicted"
        ratings from the rating model beside a top-N model's picks; "ratings", how many ratings each title had
        in training; and, for the top-N model with the user's history attached, "because": the one or two titles
        they rated whose absence would lower the pick's score most.
        """
        row = self.users.index(user)
        history = self._rated(row)
        seen = self._item_rows(exclude) if exclude is not None else history[0] if history is not None else []
        if history is not None and self.kind.encodes_history:
            # From the attached ratings, as the reasons are: the trained vector saw only the training split.
            scores = self.scorer.fold_in(*history, None)[1]
        else:
            scores = self._scores(row)
        picks, scores = self._top(scores, n, seen)
        return self._table(picks, scores, lambda rows: self._predicted(row, rows), history)

    def _table(self, picks, scores, rating_of, history=None):
        """The frame for `picks`: see `recommend` for the columns."""
        columns = {"title": [self.items.keys[r] for r in picks], self.kind.score_name: np.round(scores, 3)}
        if not self.kind.predicts_ratings and self.rating is not None:
            columns["predicted"] = np.round(rating_of(picks), 3)
        counts = self._item_counts(required=False)
        if counts is not None:
            columns["ratings"] = counts[picks].astype(int)
        if history is not None and self.kind.encodes_history:
            columns["because"] = self._reasons(picks, *history)
        return pd.DataFrame(columns)  # built once: adding columns one by one cost ~2 ms a call at 60k titles

    def _reasons(self, picks, history_rows, ratings):
        """For each pick, the rated titles whose absence would lower its score most (when it would), largest first."""
        if len(picks) == 0:
            return []
        shares = self.scorer.reason_strengths(history_rows, ratings, picks)
        best = np.argsort(-shares, axis=1, kind="stable")[:, :REASONS]
        return ["; ".join(str(self.items.keys[history_rows[j]]) for j in order if shares[i, j] > 0)
                for i, order in enumerate(best)]

    def similar(self, item, n=10, min_ratings=None):
        """The `n` titles nearest to `item` by cosine similarity of this model's item embeddings.

        A title rated by a handful of people has an embedding that is mostly noise, so titles with fewer than
        `min_ratings` ratings in training are left out (default: the catalogue's median count, at most 20; 1
        keeps every title); "ratings" gives each neighbour's count.
        """
        row = self.items.index(item)
        self._needs_item_vectors("similar titles")
        counts = self._item_counts(required=False)
        scores = scoring.matvec(self._unit_items, self._unit_items[row])
        excluded = np.zeros(len(scores), dtype=bool)  # a mask: on a long tail most titles fall under the floor
        excluded[row] = True
        if counts is not None:
            floor = self._min_ratings(counts, min_ratings)
            excluded |= counts < floor
            if excluded.all():
                raise DataError(f"no other title has {floor:g} ratings or more (the most-rated has "
                                f"{counts[1:].max():,.0f}): lower min_ratings")
        picks, similarity = self._top(scores, n, excluded)
        frame = pd.DataFrame({"title": [self.items.keys[r] for r in picks], "similarity": np.round(similarity, 3)})
        if counts is not None:
            frame["ratings"] = counts[picks].astype(int)
        return frame

    def _min_ratings(self, counts, min_ratings):
        if min_ratings is None:
            if self._floor is None:
                self._floor = min(20.0, float(np.median(counts[1:])))
            return self._floor
        if isinstance(min_ratings, bool) or not isinstance(min_ratings, (int, np.integer)) or min_ratings < 1:
            raise DataError(f"min_ratings must be a whole number of at least 1 (got {min_ratings!r})")
        return float(min_ratings)

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
        """The `n` users with the highest score for `item` (a predicted rating, or the top-N model's score)."""
        n = check_n(n, len(self.users) - 1)
        scores = np.array(self.scorer.users_for_item(self.items.index(item)), dtype=float)
        scores[0] = -np.inf
        best = np.argsort(-scores, kind="stable")[:n]
        return pd.DataFrame({"user": [self.users.keys[r] for r in best],
                             self.kind.score_name: scores[best].round(3)})

    def item_biases(self):
        """Every title's learnt bias from the folder's model with biases (`bias_model`), highest first (the book's
        "not your kind of movie" list)."""
        if self.bias_model is None:
            biased = " or ".join(name for name, kind in KINDS.items() if kind.has_biases)
            raise DataError(f"item biases come from the {biased} model, and this repo has only "
                            f"{', '.join(sorted(self.folder.weights))}; compare titles with similar() instead")
        bias = scorer(self.bias_model, self.folder.weights[self.bias_model], self.folder.y_range).item_biases()[1:]
        frame = pd.DataFrame({"title": self.items.keys[1:], "bias": bias.round(4)})
        return frame.sort_values("bias", ascending=False, ignore_index=True)

    def embedding_map(self, n_items=50, components=3, pool=1000):
        """The book's PCA map: the `n_items` most-rated titles on the top principal components of the embeddings.

        Components are fitted on the `pool` most-rated titles; popularity comes from the attached ratings,
        else from `item_counts` in vocab.json.
        """
        self._needs_item_vectors("the embedding map")
        counts = self._item_counts()
        n_items = check_n(n_items, len(self.items) - 1, "n_items")
        components = check_n(components, self._unit_items.shape[1], "components")
        pool = min(max(check_n(pool, None, "pool"), n_items), len(self.items) - 1)
        if components > pool:
            raise DataError(f"{components} principal components need at least {components} titles to fit them on, "
                            f"and pool={pool} gives {pool}: raise pool or ask for fewer components")
        order, mean, axes = self._principal_axes(counts, pool)
        coordinates = (self.scorer.item_vectors()[order[:n_items]] - mean) @ axes[:components].T
        frame = pd.DataFrame(coordinates.round(4), columns=[f"pc{i + 1}" for i in range(components)])
        frame.insert(0, "title", [self.items.keys[r] for r in order[:n_items]])
        frame["ratings"] = counts[order[:n_items]].astype(int)
        return frame

    def _principal_axes(self, counts, pool):
        """(the `pool` most-rated item rows, their mean embedding, principal axes): one SVD per model and pool size,
        remembered (150 ms for 1,000 titles of 256 numbers on one core; the map is drawn on every page)."""
        if self._axes is None or self._axes[0] != pool:
            order = np.argsort(-counts[1:], kind="stable")[:pool] + 1
            embeddings = self.scorer.item_vectors()[order]
            mean = embeddings.mean(axis=0)
            self._axes = pool, (order, mean, np.linalg.svd(embeddings - mean, full_matrices=False)[2])
        return self._axes[1]

    # --- newcomers ----------------------------------------------------------------------------------------
    def fold_in(self, ratings, n=10, l2=1.0):
        """Recommend for someone not in the model from a few `{title: rating}`, without retraining.

        Each kind's scorer says how (`fold_in` in hfcf.kinds); a kind that encodes histories folds the newcomer in
        exactly as a known user was encoded, and its picks name the rated titles behind them ("because").
        `l2` is the rating models' shrinkage towards the average user.
        """
        rows, targets = self._check_fold_in(ratings)
        l2 = check_l2(l2)
        vector, scores = self.scorer.fold_in(rows, targets, l2)
        picks, best = self._top(scores, n, rows)
        if self.scorer is self.rating or self.rating is None:
            rating_of = None
        else:
            predicted = self.rating.fold_in(rows, targets, l2)[1]
            rating_of = predicted.__getitem__
        return FoldIn(vector, scores, self._table(picks, best, rating_of, (rows, targets)))

    def _check_fold_in(self, ratings):
        """(item rows, ratings) of a newcomer's `{title: rating}` or (title, rating) pairs, checked before any work:
        at most MAX_FOLD_IN ratings, each a known title rated once within the model's range."""
        pairs = _pairs(ratings, self.implicit)
        if not pairs:
            raise DataError("rate at least one movie to get recommendations")
        if len(pairs) > MAX_FOLD_IN:
            raise DataError(f"{len(pairs):,} ratings is more than the {MAX_FOLD_IN} a newcomer can give; keep the "
                            f"{MAX_FOLD_IN} you care most about")
        rows, targets, unknown, first = [], [], [], {}
        for title, rating in pairs:
            try:
                row = self.items.index(title)
            except UnknownItemError as err:
                unknown.append(err)
                if len(unknown) == 3:  # suggestions cost a fuzzy search each: three are enough to act on
                    break
                continue
            try:
                value = float(rating)
            except (TypeError, ValueError):
                raise DataError(f"the rating of {str(title)[:80]!r} is {str(rating)[:40]!r}, not a number") from None
            if self.implicit and value != data.IMPLICIT_RATING:
                raise DataError(f"the rating of {str(title)[:80]!r} is {value:g}; this model was trained on choices "
                                f"without ratings, each counting {data.IMPLICIT_RATING:g}: give a list of the titles "
                                "chosen instead")
            if not self.implicit and (not self.low < value < self.high or not np.isfinite(value)):
                raise DataError(f"the rating of {str(title)[:80]!r} is {value}; this model predicts ratings "
                                f"strictly between {self.low:g} and {self.high:g}")
            if row in first:
                raise DataError(f"{self.items.keys[row]!r} is rated twice ({first[row]:g} and {value:g}); "
                                "keep one rating for each movie")
            first[row] = value
            rows.append(row)
            targets.append(value)
        if unknown:
            stopped = " (checking stopped at the third unknown title)" if len(unknown) == 3 else ""
            raise UnknownItemError(" ".join(str(err) for err in unknown) + stopped,
                                   [title for err in unknown for title in err.suggestions])
        return np.array(rows), np.array(targets)

    # --- shared helpers --------------------------------------------------------------------------------------
    def _needs_item_vectors(self, what):
        if not self.kind.has_item_vectors:
            others = [name for name in preferred(self.folder.weights) if KINDS[name].has_item_vectors]
            instead = f": pass model={others[0]!r}" if others else ""
            raise DataError(f"{what}: the {self.model} model has no item embeddings to compute them from{instead}")

    def _item_rows(self, titles):
        if isinstance(titles, (str, bytes)) or not isinstance(titles, Iterable):
            titles = [titles]
        return np.array([self.items.index(title) for title in titles], dtype=np.int64)

    def _top(self, scores, n, exclude_rows):
        """(rows, scores) of the `n` best item rows by score, leaving out `#na#` and `exclude_rows` (item rows, or a
        mask over them); among equal scores the lower row first, as a stable sort would order them."""
        n = check_n(n, len(self.items) - 1)
        scores = np.asarray(scores)
        scores = scores.astype(np.promote_types(scores.dtype, np.float32))  # a copy in the scorer's own precision
        scores[np.isnan(scores)] = -np.inf
        scores[0] = -np.inf
        exclude_rows = np.asarray(exclude_rows)
        scores[exclude_rows if exclude_rows.dtype == bool else exclude_rows.astype(np.int64)] = -np.inf
        n = min(n, int(np.isfinite(scores).sum()))
        if n == 0:
            return np.array([], dtype=np.int64), np.array([])
        # The n-th best score in linear time, then every row above it and the lowest rows at it.
        threshold = np.partition(scores, len(scores) - n)[len(scores) - n]
        above = np.flatnonzero(scores > threshold)
        best = np.concatenate([above, np.flatnonzero(scores == threshold)[:n - len(above)]])
        best = best[np.argsort(-scores[best], kind="stable")]
        return best, scores[best].astype(float)

    def _item_counts(self, required=True):
        """Ratings per item row in training (vocab.json), else in the attached ratings."""
        if self._counts is None:
            if self.folder.item_counts is not None:
                self._counts = np.asarray(self.folder.item_counts, dtype=float)
            elif self._history is not None:
                self._counts = np.bincount(self._history.item_rows, minlength=len(self.items)).astype(float)
            elif required:
                raise HfcfError("the PCA map needs popularity: attach the dataset's ratings (attach_history) "
                                "or use a model folder whose vocab.json has item_counts")
        return self._counts
