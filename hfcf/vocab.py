"""Index <-> key maps for users and items. Unknown keys raise with suggestions; nothing falls back to row 0.

fastai's `CategoryMap` sends an unknown key to `#na#` (row 0) without a word, so a typo quietly scores an
untrained embedding. Here row 0 exists only to keep the embedding rows in fastai's order, and is never returned.
"""
import difflib
import re
import unicodedata

import numpy as np
import pandas as pd

from .errors import UnknownItemError, UnknownUserError

NA = "#na#"
MAX_QUERY_LENGTH = 300  # bounds the fuzzy matching of an unknown query; a vocabulary's own keys may be longer
# MovieLens moves leading articles to the end ("Silence of the Lambs, The (1991)"), in several languages.
_ARTICLES = {"the", "a", "an", "il", "la", "le", "les", "l", "el", "los", "las", "das", "der", "die", "lo"}
_YEAR = re.compile(r"\(\d{4}\)")
_ITEM_SUFFIX = re.compile(r"\[item [^\]]*\]")


def normalize_title(title):
    """Case-, accent-, punctuation- and article-insensitive form of a title, year kept."""
    text = unicodedata.normalize("NFKD", str(title))
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = _ITEM_SUFFIX.sub(" ", text)
    words = re.sub(r"[^0-9a-z()]+", " ", text).split()
    return " ".join(w for w in words if w not in _ARTICLES)


def _strip_year(normalized):
    return " ".join(_YEAR.sub(" ", normalized).split())


def _longest_query(keys):
    """The longest query a vocabulary accepts: every key it holds can be typed back, however long."""
    return max([MAX_QUERY_LENGTH, *(len(str(key)) for key in keys[1:])])


def _check_query(query, what, longest):
    if query is None or not str(query).strip():
        raise (UnknownItemError if what == "title" else UnknownUserError)(f"empty {what}: type a {what}")
    if len(str(query)) > longest:
        raise (UnknownItemError if what == "title" else UnknownUserError)(
            f"that {what} is {len(str(query)):,} characters long; the longest accepted is {longest:,}")


def _bulk_rows(keys, values, what, error, as_text=False):
    """Rows (int32) of many keys at once, hashed in C (a pandas Index): 25 million ratings in about a second.

    A Categorical column (hfcf's titles) is looked up once per category. With `as_text`, ids that do not match as
    they are (a column of numbers against string ids, say) are matched again by their string form. An unknown
    key raises `error`, or maps to row 0 (`#na#`) when `error` is None.
    """
    index = pd.Index(keys[1:])
    values = pd.Series(values) if not isinstance(values, pd.Series) else values
    if isinstance(values.dtype, pd.CategoricalDtype):
        # A missing title's code, -1, picks the appended -1: one gather, no masked copy.
        per_category = np.append(index.get_indexer(values.cat.categories), -1)
        rows = per_category[values.cat.codes.to_numpy()]
    else:
        rows = index.get_indexer(values.to_numpy())
    if as_text and (rows < 0).any():  # only the keys that missed: an exact match is never undone by stripping
        missing = np.flatnonzero(rows < 0)
        text = pd.Index([str(key) for key in keys[1:]])
        rows[missing] = text.get_indexer(values.iloc[missing].astype(str).str.strip().to_numpy())
    if error is not None and (rows < 0).any():
        missing = values.iloc[int(np.flatnonzero(rows < 0)[0])]
        raise error(f"{what} {missing!r} is not in the vocabulary")
    rows += 1  # row 0 is #na#, and where an unknown key (-1) lands; in place: 200 MB a copy at 25M ratings
    # int32 rows (no vocabulary comes near 2**31 keys): half the memory of every array of rows made from them
    return rows.astype(np.int32) if len(keys) < 2**31 else rows


def from_ratings(*frames):
    """Vocabularies of every user and title in one or more ratings frames (a split's two sides: no concatenated
    copy of millions of rows), sorted, `#na#` first as fastai orders them."""
    def unique(column):
        return set().union(*(frame[column].unique().tolist() for frame in frames))

    return UserVocab([NA, *sorted(unique("user"))]), ItemVocab([NA, *sorted(unique("title"))])


class UserVocab:
    """User ids in embedding-row order; look-ups accept the id or its string form."""

    def __init__(self, keys):
        self.keys = list(keys)
        self._index = {str(key): row for row, key in enumerate(self.keys) if row > 0}
        self.longest = _longest_query(self.keys)

    def __len__(self):
        return len(self.keys)

    def rows(self, users, unknown_as_na=False):
        """Rows of many exact ids at once (training data); unknown ids raise, or give row 0 with `unknown_as_na`."""
        return _bulk_rows(self.keys, users, "user", None if unknown_as_na else UnknownUserError, as_text=True)

    def index(self, user):
        _check_query(user, "user", self.longest)
        row = self._index.get(str(user).strip())
        if row is None:
            raise UnknownUserError(f"user {str(user)[:40]!r} is not in this model; {self.describe()}")
        return row

    def ids(self):
        """The real user ids, without the `#na#` row."""
        return self.keys[1:]

    def describe(self):
        """One phrase naming the valid ids, for error messages and the UI."""
        ids = self.ids()
        if all(isinstance(key, int) for key in ids) and ids == list(range(ids[0], ids[0] + len(ids))):
            return f"valid user ids are {ids[0]} to {ids[-1]}"
        return f"valid user ids include {', '.join(map(str, ids[:5]))} ({len(ids):,} users)"


class ItemVocab:
    """Item titles in embedding-row order; look-ups forgive case, accents, articles and a missing year."""

    def __init__(self, keys):
        self.keys = list(keys)
        self._exact = {key: row for row, key in enumerate(self.keys) if row > 0}
        self.longest = _longest_query(self.keys)
        self._normalized, self._no_year = {}, {}
        for row, key in enumerate(self.keys[1:], start=1):
            normalized = normalize_title(key)
            self._normalized.setdefault(normalized, []).append(row)
            self._no_year.setdefault(_strip_year(normalized), []).append(row)

    def __len__(self):
        return len(self.keys)

    def rows(self, titles, unknown_as_na=False):
        """Rows of many exact titles at once (training data); unknown titles raise, or give row 0 with
        `unknown_as_na`."""
        return _bulk_rows(self.keys, titles, "title", None if unknown_as_na else UnknownItemError, as_text=True)

    def index(self, title):
        """The row of `title`: exact, then normalized, then without the year; else suggestions."""
        _check_query(title, "title", self.longest)
        title = str(title).strip()
        if title in self._exact:
            return self._exact[title]
        normalized = normalize_title(title)
        for table, key in ((self._normalized, normalized), (self._no_year, _strip_year(normalized))):
            rows = table.get(key, [])
            if len(rows) == 1:
                return rows[0]
            if len(rows) > 1:
                names = [self.keys[row] for row in rows]
                raise UnknownItemError(f"{title!r} matches {len(rows)} titles: {'; '.join(names[:5])}. "
                                       "Pick one.", names[:5])
        suggestions = self.suggest(title)
        hint = (f" Did you mean: {'; '.join(suggestions)}?" if suggestions else
                " Check the spelling, and that this is the model you meant: its titles come from the data it was "
                "trained on.")
        raise UnknownItemError(f"no title matches {title!r} among this model's {len(self.keys) - 1:,} titles.{hint}",
                               suggestions)

    def suggest(self, query, limit=5):
        """Up to `limit` titles close to `query`: containing it first, then by spelling."""
        if not query or len(str(query)) > self.longest:
            return []
        key = _strip_year(normalize_title(query))
        if not key:
            return []
        containing = [rows for name, rows in self._no_year.items() if key in name]
        close = [self._no_year[name] for name in difflib.get_close_matches(key, self._no_year, n=limit, cutoff=0.6)]
        titles = []
        for rows in containing + close:
            for row in rows:
                if self.keys[row] not in titles:
                    titles.append(self.keys[row])
        return titles[:limit]
