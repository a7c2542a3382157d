"""Read MovieLens or any user/item/rating table into one validated `Dataset`; make synthetic data.

Every loader returns ratings with the columns user, item, title, rating, timestamp (seconds), in file order,
after `validate` has checked them; `load` makes the ratings float32 once it has fingerprinted them. Two rules
shape that frame:

Titles are the model's item keys, so each item gets exactly one title and no two items share one.
Titles are stripped of surrounding spaces. Distinct item ids that share a title stay distinct: the
lowest id keeps the title and every later id gets the suffix " [item <id>]", e.g.
"Chasing Amy (1997) [item 268]"; so does a title "#na#", the name of the embeddings' unknown row. An
item with no title gets its id as text. When a titles table gives one id several titles, the first is kept
and a note says so. MovieLens readers apply the rule to the whole catalogue, so a title never depends on
which ratings a split holds.

Ids that are all whole numbers become integers when they fit in 64 bits, else their exact decimal text, so
no two ids ever collapse into one. A user id "#na#" is refused: that name is the unknown row's.

A (user, item) pair rated more than once is refused by default (`on_duplicate="error"`).
`on_duplicate="last"` keeps the rating with the latest timestamp (the later row on ties or without
timestamps); `on_duplicate="mean"` keeps one row at the first one's place with the mean rating and
the latest timestamp. Either way the count goes into `Dataset.notes`.
"""

import contextlib
import csv
import hashlib
import io
import os
import shlex
import shutil
import sys
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from . import delimited
from .errors import DataError, MissingColumnError
from .vocab import NA

COLUMNS = ["user", "item", "title", "rating", "timestamp"]
FINGERPRINT_CHUNK = 1 << 22  # rows hashed at once
DUPLICATE_POLICIES = ("error", "last", "mean")
NO_RATINGS = "none"  # --rating-col none: the table says who chose what, not how much they liked it
IMPLICIT_RATING = 1.0  # what a choice counts as in implicit data: every choice weighs the same
IMPLICIT_NOTE = ("{source} has no ratings (implicit data): each (user, item) row is a choice weighing 1, so only the "
                 "top-N model trains on it")
FORMATS = ("ml-100k", "ml-latest-small", "ml-1m", "table", "matrix", "synthetic")
# The keyword arguments of `load` that say how to read a text table, and those each kind of file takes.
READING_OPTIONS = {"sep", "header", "columns", "encoding"}
TABLE_OPTIONS = READING_OPTIONS | {"user_col", "item_col", "rating_col", "timestamp_col", "titles_path", "title_col",
                                   "titles_item_col"}
MATRIX_OPTIONS = READING_OPTIONS | {"user_col", "missing", "titles_path", "title_col", "titles_item_col"}

MOVIELENS_LICENCE = (
    "MovieLens data from GroupLens Research (University of Minnesota): research use only, no commercial "
    "use without permission, no endorsement implied, cite Harper & Konstan (2015), and no redistribution "
    "of the data without separate permission, so these ratings are not published with the model."
)
MOVIELENS_CITATION = """@article{harper2015movielens,
  author = {Harper, F. Maxwell and Konstan, Joseph A.},
  title = {The MovieLens Datasets: History and Context},
  journal = {ACM Transactions on Interactive Intelligent Systems},
  volume = {5}, number = {4}, articleno = {19}, numpages = {19},
  year = {2015}, doi = {10.1145/2827872}
}"""
ML_100K_URL = "https://grouplens.org/datasets/movielens/100k/"
ML_100K_ZIP_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"  # fastai's URLs.ML_100k
ML_LATEST_SMALL_ZIP_URL = "https://files.grouplens.org/datasets/movielens/ml-latest-small.zip"
DOWNLOAD_TIMEOUT = 30  # seconds without data before a download gives up
# ml-25m, ml-32m and ml-latest use the same two CSV files as ml-latest-small.
MOVIELENS_CSV_NAMES = {"ml-25m": "MovieLens 25M", "ml-32m": "MovieLens 32M", "ml-latest": "MovieLens latest"}
# Words that hint which column a user meant, for the fix in a missing-column error.
COLUMN_WORDS = {"user": ("user",), "item": ("item", "movie", "product", "book", "isbn"),
                "rating": ("rating", "score", "star"), "timestamp": ("time", "date"), "title": ("title", "name")}
# The ratings file of each MovieLens folder, and the columns of the CSV pair MovieLens latest-small reads.
MOVIELENS_RATINGS_FILES = {"ml-100k": "u.data", "ml-latest-small": "ratings.csv", "ml-1m": "ratings.dat"}
MOVIELENS_CSV_COLUMNS = {"ratings.csv": {"user": "userId", "item": "movieId", "rating": "rating"},
                         "movies.csv": {"item": "movieId", "title": "title"}}
ML_100K_FIX = "pass the ml-100k folder (it holds u.data and u.item) or let hfcf download it"
SYNTHETIC_BEST_BIAS = 2.0  # large enough that best items out-rate every other item whoever rates them


@dataclass
class Dataset:
    """A validated ratings table with what a model card needs to say about it."""

    ratings: pd.DataFrame
    name: str
    licence: str
    citation: str
    url: str
    notes: list[str]
    truth: dict | None = None
    read_as: dict | None = None  # how `load` read it (format, source, column flags), for reading it again
    fingerprint: dict | None = None  # `fingerprint(ratings)`, taken by `load` before a split doubles the memory
    reading: "delimited.Reading | None" = None  # how a text table's separator, header and encoding were taken
    implicit: bool = False  # no ratings in the source: every rating is IMPLICIT_RATING, a choice


def fingerprint(ratings):
    """{"n_ratings", "sha256"} of a validated ratings frame, independent of row order: the same file read the same
    way gives the same fingerprint, and a changed rating, user or title gives another."""
    # Ratings hashed as float64 whatever their dtype: `load` fingerprints them before making them float32. A row's
    # hash depends on that row alone, so it is taken a chunk at a time and sorted in place: at 25M ratings hashing
    # the whole frame at once, and sorting a copy, peaked ~1 GB higher.
    columns = ratings[["user", "item", "rating"]]
    rows = np.empty(len(columns), dtype=np.uint64)
    for start in range(0, len(columns), FINGERPRINT_CHUNK):
        chunk = columns.iloc[start:start + FINGERPRINT_CHUNK].astype({"rating": "float64"})
        rows[start:start + len(chunk)] = pd.util.hash_pandas_object(chunk, index=False).to_numpy()
    rows.sort()
    return {"n_ratings": int(len(ratings)), "sha256": hashlib.sha256(memoryview(rows)).hexdigest()}


def movielens_100k(path=None, on_duplicate="error", y_range=None):
    """MovieLens 100k from `path`, $FASTAI_HOME/data/ml-100k (FASTAI_HOME defaults to ~/.fastai), or a download.

    The download goes through fastai's `untar_data` when fastai is installed, else through the standard
    library into $FASTAI_HOME/data/ml-100k. Set HFCF_ML100K_URL to fetch the zip from another address (a
    mirror); it is always fetched with the standard library.
    """
    folder = _ml100k_folder(path)
    _require(folder, ["u.data", "u.item"], ML_100K_FIX)
    titles, notes = _ml100k_titles(folder)
    ratings = _read_ml100k_ratings(folder / "u.data").assign(title=lambda frame: frame["item"].map(titles))
    return _movielens(ratings, notes, "MovieLens 100k", ML_100K_URL, on_duplicate, y_range, "u.data")


def movielens_latest_small(path, on_duplicate="error", y_range=None):
    """MovieLens latest-small (or 25M, 32M, latest): ratings.csv and movies.csv in `path`."""
    folder = Path(path).expanduser()
    _require(folder, ["ratings.csv", "movies.csv"], "pass the folder unzipped from ml-latest-small.zip")
    movies, ratings = _read(folder / "movies.csv"), _read(folder / "ratings.csv")
    _require_movielens_columns(folder, {"ratings.csv": ratings, "movies.csv": movies})
    titles, notes = _unique_titles(movies["movieId"], movies["title"])
    ratings = ratings.rename(columns={"userId": "user", "movieId": "item"})
    ratings["title"] = ratings["item"].map(titles)
    name = MOVIELENS_CSV_NAMES.get(folder.name, "MovieLens latest-small")
    return _movielens(ratings, notes, name, "https://grouplens.org/datasets/movielens/latest/", on_duplicate,
                      y_range, "ratings.csv")


def movielens_1m(path, on_duplicate="error", y_range=None):
    """MovieLens 1M: ratings.dat and movies.dat (`::` separated, latin-1) in `path`."""
    folder = Path(path).expanduser()
    _require(folder, ["ratings.dat", "movies.dat"], "pass the folder unzipped from ml-1m.zip")
    # Splitting on ":" lets the fast C parser read "::"; the empty fields between land in odd columns.
    ratings = _read(folder / "ratings.dat", sep=":", header=None, usecols=[0, 2, 4, 6])
    ratings.columns = ["user", "item", "rating", "timestamp"]
    # Titles hold single colons ("Star Wars: Episode IV"), so movies.dat needs the exact "::".
    movies = _read(folder / "movies.dat", sep="::", engine="python", header=None, encoding="latin-1",
                   quoting=csv.QUOTE_NONE)
    titles, notes = _unique_titles(movies[0], movies[1])
    ratings["title"] = ratings["item"].map(titles)
    return _movielens(ratings, notes, "MovieLens 1M", "https://grouplens.org/datasets/movielens/1m/", on_duplicate,
                      y_range, "ratings.dat")


def ratings_table(path, user_col, item_col, rating_col, timestamp_col=None, titles_path=None, title_col="title",
                  titles_item_col=None, on_duplicate="error", y_range=None, sep=None, header=None, columns=None,
                  encoding=None):
    """Any ratings table (delimited text as `delimited.sniff` detects it, or .parquet), with titles from its own
    column or a second table. `sep`, `header`, `columns` and `encoding` say outright what detection would guess.

    `rating_col=None`, or a table whose only columns are the others asked for, is implicit data: who chose what.
    """
    path = Path(path).expanduser()
    table, reading = _read_table(path, sep, header, columns, encoding, default_columns=("user", "item", "rating",
                                                                                        "timestamp"),
                                 id_columns=(user_col, item_col))
    wanted = {"user": (user_col, "--user-col"), "item": (item_col, "--item-col")}
    if timestamp_col is not None:
        wanted["timestamp"] = (timestamp_col, "--timestamp-col")
    if titles_path is None and title_col in table.columns:
        wanted["title"] = (title_col, "--title-col")
    implicit = rating_col is None or _only_columns(table, wanted, rating_col)
    if not implicit:
        wanted["rating"] = (rating_col, "--rating-col")
    _refuse_movielens_file(path, table, wanted, reading)
    _check_read_as_table(table, path, reading, sep)
    try:
        ratings = _pick_columns(table, wanted, path.name)
    except MissingColumnError as err:
        if _header_assumed(table, reading, header, columns):  # its "columns" may be its first row of data
            raise MissingColumnError(f"{err}; or, if its first row ({', '.join(err.found)}) is data rather than "
                                     "column names, pass --no-header", err.source, err.column, err.found) from None
        raise
    del table  # the picked columns are a copy
    return _titled_dataset(ratings, path, reading, titles_path, title_col, titles_item_col or item_col, on_duplicate,
                           y_range, implicit)


def _header_assumed(table, reading, header, columns):
    """Whether the first row was taken for a header with nothing to tell by: not said, and no column of numbers."""
    return (reading is not None and reading.header and header is None and columns is None
            and not any(pd.api.types.is_numeric_dtype(table[name]) for name in table.columns))


def ratings_matrix(path, user_col=None, missing=None, titles_path=None, title_col="title", titles_item_col=None,
                   on_duplicate="error", y_range=None, sep=None, header=None, columns=None, encoding=None):
    """A wide matrix: one row per user, one column per item (named by the header, else numbered from 1), a cell
    `missing` (or empty) where the user rated nothing. Users are `user_col`'s ids, a column named like "user", or
    else the row numbers from 1."""
    path = Path(path).expanduser()
    table, reading = _read_table(path, sep, header, columns, encoding, default_columns=None)
    _check_read_as_table(table, path, reading, sep)
    user_col = user_col or next((name for name in map(str, table.columns)
                                 if any(word in name.lower() for word in COLUMN_WORDS["user"])), None)
    if user_col is not None:
        _pick_columns(table, {"user": (user_col, "--user-col")}, path.name)  # only to refuse a missing one
        users = table.pop(user_col).to_numpy()
    else:
        users = np.arange(1, len(table) + 1)
    ratings = _melt(table, users, missing, path.name)
    del table
    return _titled_dataset(ratings, path, reading, titles_path, title_col, titles_item_col or "item", on_duplicate,
                           y_range)


def _melt(table, users, missing, source):
    """The rated cells of a users-by-items `table` as user, item, rating rows, user by user; a cell that is neither a
    number nor `missing` is refused."""
    numbers = table.apply(pd.to_numeric, errors="coerce").to_numpy(dtype="float64")
    absent = table.isna().to_numpy().copy()  # pandas may hand back a read-only view
    marker = None if missing is None else str(missing).strip()
    if marker and delimited.is_number(marker):
        absent |= numbers == float(marker)
    texts = [position for position, dtype in enumerate(table.dtypes) if not pd.api.types.is_numeric_dtype(dtype)]
    for position in texts:  # only columns holding text need it compared as text: a numeric matrix skips this
        text = table.iloc[:, position].astype(str).str.strip().to_numpy()
        absent[:, position] |= (text == "") | (text == marker)
    bad = np.isnan(numbers) & ~absent
    if bad.any():
        row, column = (int(index[0]) for index in np.nonzero(bad))
        value = str(table.iat[row, column]).strip()
        raise DataError(f"{source} has {int(bad.sum())} cells that are neither ratings nor the missing marker (first: "
                        f"{value!r} in column {table.columns[column]}, data row {row + 1}); pass --missing "
                        f"{shlex.quote(value)} if it marks 'not rated', or fix those cells")
    rows, columns = np.nonzero(~absent)
    return pd.DataFrame({"user": users[rows], "item": np.asarray(table.columns.map(str))[columns],
                         "rating": numbers[rows, columns]})


def _titled_dataset(ratings, path, reading, titles_path, title_col, titles_item_col, on_duplicate, y_range,
                    implicit=False):
    """Validate `ratings` read from `path`, their titles from `titles_path` when given, into a Dataset."""
    notes = []
    if titles_path is not None:
        titles_path = Path(titles_path).expanduser()
        wanted = {"item": (titles_item_col, "--titles-item-col"), "title": (title_col, "--title-col")}
        catalogue, catalogue_reading = _read_table(titles_path, default_columns=("item", "title"))
        _check_read_as_table(catalogue, titles_path, catalogue_reading)
        catalogue = _pick_columns(catalogue, wanted, titles_path.name)
        titles, notes = _unique_titles(_normalise_ids(catalogue["item"]), catalogue["title"])
        ratings["title"] = _normalise_ids(ratings["item"]).map(titles)
    clean, validation_notes = validate(ratings, y_range=y_range, on_duplicate=on_duplicate, source=path.name,
                                       implicit=implicit)
    if implicit:
        notes.insert(0, IMPLICIT_NOTE.format(source=path.name))
    return Dataset(clean, path.name, "", "", "", notes + validation_notes, reading=reading, implicit=implicit)


def _only_columns(table, wanted, rating_col):
    """Whether `table` lacks `rating_col` and holds nothing but the `wanted` columns (user and item, say): a table
    of choices, perhaps with a time column. Any other might be the ratings under another name: refused as missing."""
    others = [str(column).lower() for column in table.columns if column not in {theirs for theirs, _ in wanted.values()}]
    return rating_col not in table.columns and all(any(word in name for word in COLUMN_WORDS["timestamp"])
                                                   for name in others)


def synthetic(n_users=200, n_items=120, n_clusters=4, ratings_per_user=30, seed=0, noise=0.3, own_share=0.5):
    """Ratings with planted clusters and best items, for tests and offline demos; deterministic from `seed`.

    Users prefer their cluster's titles twice over: they rate them higher, and `own_share` of each user's ratings
    fall on them (against 1 / n_clusters by chance), so what people choose to rate carries the clusters too.
    """
    if not 1 <= n_clusters <= n_users or n_items < 2 * n_clusters:
        raise DataError(f"synthetic data needs n_users >= n_clusters >= 1 and n_items >= 2 * n_clusters "
                        f"(got {n_users} users, {n_items} items, {n_clusters} clusters); raise n_users/n_items")
    if not 3 <= ratings_per_user <= n_items or n_users * ratings_per_user < 3 * n_items:
        raise DataError(f"synthetic data needs 3 <= ratings_per_user <= n_items and at least 3 ratings per item "
                        f"(got {ratings_per_user} per user, {n_users} users, {n_items} items); raise ratings_per_user")
    if not 0 <= own_share <= 1:
        raise DataError(f"synthetic data needs 0 <= own_share <= 1 (got {own_share})")
    rng = np.random.default_rng(seed)
    user_cluster = rng.permutation(np.arange(n_users) % n_clusters)
    item_cluster = rng.permutation(np.arange(n_items) % n_clusters)
    item_bias = rng.uniform(-0.25, 0.25, n_items)
    best = np.concatenate([np.flatnonzero(item_cluster == k)[:2] for k in range(n_clusters)])
    item_bias[best] = SYNTHETIC_BEST_BIAS
    users, items = _balanced_choices(rng, user_cluster, item_cluster, ratings_per_user, own_share)
    affinity = np.where(user_cluster[users] == item_cluster[items], 4.5, 1.5)
    raw = affinity + item_bias[items] + rng.normal(0, noise, len(users))
    titles = np.array([f"Cluster {k} Movie {i + 1:03d}" for i, k in enumerate(item_cluster)])
    ratings = pd.DataFrame({"user": users + 1, "item": items + 1, "title": titles[items],
                            "rating": np.round(np.clip(raw, 1, 5) * 2) / 2, "timestamp": np.nan})
    clean, notes = validate(ratings, source="synthetic")
    truth = {"user_cluster": {int(u) + 1: int(k) for u, k in enumerate(user_cluster)},
             "item_cluster": {str(t): int(k) for t, k in zip(titles, item_cluster)},
             "best_items": [str(t) for t in titles[best]]}
    notes.insert(0, f"synthetic: {n_users} users, {n_items} items, {n_clusters} clusters, seed {seed}, noise {noise}, "
                    f"own-cluster share {own_share}")
    return Dataset(clean, "synthetic", "Synthetic ratings generated by hfcf; no restrictions.", "", "", notes, truth)


def load(source=None, *, format="auto", on_duplicate="error", y_range=None, **table_kwargs):
    """Load `source` (None: MovieLens 100k; "synthetic"; a MovieLens folder; a ratings file, on disk or an
    hf://datasets/OWNER/NAME[@REVISION]/PATH on the Hub) as a Dataset.

    `rating_col="none"` (NO_RATINGS), or a file of only user and item (and title, timestamp) columns, reads choices
    without ratings: `Dataset.implicit`, every rating IMPLICIT_RATING."""
    if format not in ("auto", *FORMATS):
        raise DataError(f"unknown format {format!r}; pass --format with one of auto, {', '.join(FORMATS)}")
    source, pinned, table_kwargs = _fetch_from_hub(source, table_kwargs)
    if format == "auto":
        format = _detect_format(source)
    table_kwargs = {key: value for key, value in table_kwargs.items() if value is not None}
    _check_options(format, table_kwargs)
    # Names, not paths: config.json is published, and where the files lie is this machine's business.
    read_as = {"format": format, "source": pinned or (None if source is None else Path(source).name),
               "columns": {key: Path(value).name if key == "titles_path" else value
                           for key, value in table_kwargs.items()},
               "on_duplicate": on_duplicate}
    if format == "synthetic":
        dataset = synthetic()
        validate(dataset.ratings, y_range=y_range, source="synthetic")  # only to check y_range
    elif source is None and format != "ml-100k":
        raise DataError(f"format {format} needs a source; pass a folder or file")
    elif format == "table":
        columns = {"user_col": "user", "item_col": "item", "rating_col": "rating"} | table_kwargs
        if columns["rating_col"] == NO_RATINGS:
            columns["rating_col"] = None
        dataset = ratings_table(source, on_duplicate=on_duplicate, y_range=y_range, **columns)
        if dataset.implicit:  # read again (the app's histories) as implicit, whatever the file holds by then
            read_as["columns"]["rating_col"] = NO_RATINGS
    elif format == "matrix":
        dataset = ratings_matrix(source, on_duplicate=on_duplicate, y_range=y_range, **table_kwargs)
    else:
        reader = {"ml-100k": movielens_100k, "ml-latest-small": movielens_latest_small, "ml-1m": movielens_1m}[format]
        dataset = reader(source, on_duplicate=on_duplicate, y_range=y_range)
    if dataset.reading is not None:  # what was detected too, so the app reads the file again the same way
        read_as["columns"] |= dataset.reading.options()
    dataset.read_as = read_as
    dataset.fingerprint = fingerprint(dataset.ratings)
    # float32 from here, as the models take them (100 MB less per copy at 25M ratings); fingerprinted before, in
    # float64 as they were read, so a folder written when they stayed float64 still matches its data.
    dataset.ratings["rating"] = dataset.ratings["rating"].astype("float32")
    return dataset


def _fetch_from_hub(source, table_kwargs):
    """(local source, the hf:// URL pinned to its commit or None, table_kwargs with a local titles_path): files on
    the Hub are downloaded (or found in the cache) first, so everything after reads a local file."""
    from . import hub  # here, not at the top: hub imports the modules that build on this one

    pinned = None
    if hub.is_hub_url(source):
        source, pinned = hub.dataset_file(source)
    if hub.is_hub_url(table_kwargs.get("titles_path")):
        table_kwargs = table_kwargs | {"titles_path": hub.dataset_file(table_kwargs["titles_path"])[0]}
    return source, pinned, table_kwargs


def _check_options(format, options):
    """Refuse `load` options that `format` does not take, naming them as train.py's flags."""
    unknown = sorted(set(options) - TABLE_OPTIONS - MATRIX_OPTIONS)
    if unknown:
        raise DataError(f"data.load takes no option {', '.join(map(repr, unknown))}; its reading options are "
                        f"{', '.join(sorted(TABLE_OPTIONS | MATRIX_OPTIONS))}")
    allowed = {"table": TABLE_OPTIONS, "matrix": MATRIX_OPTIONS}.get(format, set())
    refused = [key for key in options if key not in allowed]
    if refused:
        flags = ", ".join(_FLAGS.get(key, "--" + key.replace("_", "-")) for key in refused)
        if format == "table":
            raise DataError(f"{flags} can only be used with --format matrix; leave them out")
        if format == "matrix":
            raise DataError(f"{flags} cannot be used with --format matrix (its columns are the items); leave them out")
        raise DataError(f"{flags} can only be used with a ratings file, not with {format} data; leave them out")


_FLAGS = {"titles_path": "--titles", "header": "--header/--no-header"}  # options whose train.py flag is not --OPTION


def validate(df, *, y_range=None, on_duplicate="error", source="ratings", implicit=False):
    """Check and tidy a ratings frame; return (frame with COLUMNS in file order, notes) or raise DataError.

    `implicit`: the frame says who chose what and needs no rating column; every rating becomes IMPLICIT_RATING.
    """
    if on_duplicate not in DUPLICATE_POLICIES:
        raise DataError(f"on_duplicate must be one of {', '.join(DUPLICATE_POLICIES)} (got {on_duplicate!r}); "
                        "pass --on-duplicate last or --on-duplicate mean")
    y_range = _check_y_range(y_range)
    if df is None or len(df) == 0:
        raise DataError(f"{source} has no ratings (it is empty or holds only a header); "
                        "point at a table with at least one rating row")
    missing = [column for column in ("user", "item", *(() if implicit else ("rating",))) if column not in df.columns]
    if missing:
        found = ", ".join(map(str, df.columns))
        raise DataError(f"{source} has no column {missing[0]!r} (columns found: {found}); "
                        f"rename the column that holds it to {missing[0]!r} or pass --{missing[0]}-col NAME")
    if implicit:
        df = df.assign(rating=IMPLICIT_RATING)
    # No column of missing titles: at 25M ratings that would be 200 MB of pointers, replaced a few lines down.
    df = df.reset_index(drop=True).reindex(columns=[column for column in COLUMNS
                                                    if column != "title" or "title" in df.columns])
    for column in ("user", "item"):
        df[column] = _check_ids(df[column], column, source)
    _refuse_reserved_users(df["user"], source)
    if not implicit:
        df["rating"] = _check_ratings(df["rating"], y_range, source)
    df["timestamp"] = _seconds(df["timestamp"], source)
    df, notes = _merge_duplicates(df, on_duplicate, source)
    codes, uniques = pd.factorize(df["item"])
    # Codes come in order of first appearance: a row whose code exceeds every earlier one is its item's first row.
    first_rows = np.flatnonzero(codes > np.maximum.accumulate(np.concatenate([[-1], codes[:-1]])))
    first_titles = (df["title"].iloc[first_rows].reset_index(drop=True) if "title" in df.columns
                    else pd.Series([None] * len(first_rows), dtype=object))
    titles, title_notes = _unique_titles(pd.Series(uniques), first_titles)
    # A Categorical: one code per rating instead of a Python string, and vocab look-ups once per title.
    df["title"] = pd.Categorical.from_codes(codes, categories=[titles[item] for item in uniques])
    for column, noun in (("user", "users"), ("item", "items")):
        count = df[column].nunique()
        if count < 2:
            raise DataError(f"{source} has {count} distinct {noun[:-1]}; collaborative filtering needs at least "
                            f"2 users and 2 items; load a table with ratings from more {noun}")
    return df[COLUMNS].reset_index(drop=True), notes + title_notes


def ids_as_trained(ids):
    """User or item ids as `validate` makes them (whole numbers, or their text, alike: "007", 7.0 and 7 are one id),
    to match a frame a user has to a model's vocabularies; missing ids stay missing."""
    return _normalise_ids(pd.Series(ids))


def titles_as_trained(items):
    """Item ids titled as `validate` titles items without a title (each its id as text), a Categorical: the
    model's item keys for a frame keyed by ids; a missing id has no title."""
    codes, uniques = pd.factorize(ids_as_trained(items))
    titles, _ = _unique_titles(pd.Series(uniques), pd.Series([None] * len(uniques), dtype=object))
    return pd.Categorical.from_codes(codes, categories=[titles[item] for item in uniques])


def random_split(df, valid_pct=0.2, seed=42):
    """Random row split; a validation row whose user or item train lacks moves to train."""
    if not 0 < valid_pct < 1:
        raise DataError(f"valid_pct must be between 0 and 1 (got {valid_pct}); pass --valid-pct 0.2")
    rng = np.random.default_rng(seed)
    is_valid = np.zeros(len(df), dtype=bool)
    is_valid[rng.permutation(len(df))[: round(len(df) * valid_pct)]] = True
    train = df[~is_valid]
    # Moving rows only adds ids to train, so one pass leaves every validation id seen.
    unseen = ~df["user"].isin(train["user"]) | ~df["item"].isin(train["item"])
    is_valid &= ~unseen.to_numpy()
    return df[~is_valid], df[is_valid]


def canonical_split(path=None, fold=1):
    """MovieLens 100k fold `fold` (1-5) as (train, test): u{fold}.base/u{fold}.test, or derived from u.data.

    Without those files the fold is derived as GroupLens's mku.sh does: test is rows (fold-1)*20000 to
    fold*20000 of u.data in file order, base the other 80000, each sorted by user then item.
    """
    if fold not in range(1, 6):
        raise DataError(f"MovieLens 100k has canonical folds 1 to 5 (got {fold!r}); pass --fold 1")
    folder = _ml100k_folder(path)
    _require(folder, ["u.item"], ML_100K_FIX)
    base, test = folder / f"u{fold}.base", folder / f"u{fold}.test"
    if base.is_file() and test.is_file():
        frames = [_read_ml100k_ratings(base), _read_ml100k_ratings(test)]
    else:
        _require(folder, ["u.data"], ML_100K_FIX)
        ratings = _read_ml100k_ratings(folder / "u.data")
        in_test = np.arange(len(ratings)) // 20000 == fold - 1
        frames = [ratings[mask].sort_values(["user", "item"], kind="stable") for mask in (~in_test, in_test)]
    titles, _ = _ml100k_titles(folder)
    return tuple(validate(frame.assign(title=frame["item"].map(titles)), source=file.name)[0]
                 for frame, file in zip(frames, (base, test)))


def _movielens(ratings, title_notes, name, url, on_duplicate, y_range, source):
    """Validate MovieLens ratings and wrap them with the GroupLens licence and citation."""
    clean, notes = validate(ratings, y_range=y_range, on_duplicate=on_duplicate, source=source)
    return Dataset(clean, name, MOVIELENS_LICENCE, MOVIELENS_CITATION, url, title_notes + notes)


def _ml100k_folder(path):
    """The folder holding MovieLens 100k: `path`, fastai's data folder, or a fresh download."""
    if path is not None:
        return Path(path).expanduser()
    cached = Path(os.environ.get("FASTAI_HOME", "~/.fastai")).expanduser() / "data" / "ml-100k"
    if (cached / "u.data").is_file():
        return cached  # spares importing fastai (seconds) when the data is already there
    url = os.environ.get("HFCF_ML100K_URL")
    if url is None:
        try:
            # fastai's own download path: it also finds a copy seeded where its config.ini points.
            from fastai.data.external import URLs, untar_data
        except ImportError:
            url = ML_100K_ZIP_URL  # the Space serves without fastai
        else:
            try:
                # fastprogress draws its bar even into a log file, leaving a stray block glyph before the
                # next line; off a terminal the download stays quiet (failures still raise).
                quiet = contextlib.nullcontext() if sys.stdout.isatty() else contextlib.redirect_stdout(io.StringIO())
                with quiet:
                    return Path(untar_data(URLs.ML_100k))
            except Exception as error:  # a download fails in many ways; the fix is the same for all
                raise DataError(f"could not download MovieLens 100k with fastai ({error}); "
                                f"pass the ml-100k folder, or put it in {cached}") from error
    return _download_ml100k(url, cached)


def _download_ml100k(url, folder):
    """Fetch the MovieLens 100k zip from `url` with the standard library and unpack it as `folder`."""
    return _download_movielens(url, folder, "ml-100k", ("u.data", "u.item"), "MovieLens 100k")


def _download_movielens(url, folder, top, required, name):
    """Fetch a GroupLens zip from `url` with the standard library and unpack its `top` folder as `folder`."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        # Unpack beside `folder` and rename into place last, so a failed or interrupted download never
        # leaves a folder that a later call would take for a complete copy.
        with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{top}-") as scratch:
            scratch = Path(scratch)
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response, \
                    open(scratch / f"{top}.zip", "wb") as file:
                shutil.copyfileobj(response, file)
            with zipfile.ZipFile(scratch / f"{top}.zip") as archive:
                _unpack(archive, scratch, top, required)
            os.replace(scratch / top, folder)
    except Exception as error:  # network, HTTP, disk and zip failures all have the same fix
        if all((folder / name).is_file() for name in required):
            return folder  # another process unpacked it first, so the rename found the folder taken
        raise DataError(f"could not download {name} from {url} ({error}); "
                        f"pass the {top} folder, or put it in {folder}") from error
    return folder


def _unpack(archive, scratch, top, required):
    """Extract `archive` to scratch/top; refuse entries outside top/ and a copy without the `required` files."""
    for name in archive.namelist():
        parts = PurePosixPath(name).parts
        # zipfile would quietly rewrite "../x" or "/x" to land inside; refusing says the file is not the zip.
        if not parts or parts[0] != top or ".." in parts:
            raise ValueError(f"zip entry {name!r} is outside {top}/")
    archive.extractall(scratch)
    for name in required:
        if not (scratch / top / name).is_file():
            raise ValueError(f"the zip holds no {top}/{name}")


def movielens_latest_small_copy():
    """The MovieLens latest-small folder: $FASTAI_HOME/data/ml-latest-small, else downloaded there from GroupLens
    (HFCF_ML_LATEST_SMALL_URL names a mirror). For the app's users' histories: train.py takes a folder."""
    folder = Path(os.environ.get("FASTAI_HOME", "~/.fastai")).expanduser() / "data" / "ml-latest-small"
    if (folder / "ratings.csv").is_file() and (folder / "movies.csv").is_file():
        return folder
    url = os.environ.get("HFCF_ML_LATEST_SMALL_URL", ML_LATEST_SMALL_ZIP_URL)
    return _download_movielens(url, folder, "ml-latest-small", ("ratings.csv", "movies.csv"),
                               "MovieLens latest-small")


def _read_ml100k_ratings(file):
    """Read a u.data-format file: tab separated user, item, rating, timestamp."""
    return _read(file, sep="\t", header=None, names=["user", "item", "rating", "timestamp"])


def _ml100k_titles(folder):
    """(item id -> unique title, notes) from u.item (`|` separated, latin-1, not quoted)."""
    movies = _read(folder / "u.item", sep="|", header=None, usecols=[0, 1], encoding="latin-1",
                   quoting=csv.QUOTE_NONE)
    return _unique_titles(movies[0], movies[1])


def _unique_titles(items, titles):
    """(item id -> one unique title by the module's duplicate-title rule, notes); an id's first title wins."""
    listed = pd.Series(titles.to_numpy(dtype=object), index=items.to_numpy())
    first = listed.groupby(level=0, sort=True).first()
    unique, taken, untitled, renamed = {}, {NA}, 0, []
    for item, title in first.items():
        title = "" if pd.isna(title) else str(title).strip()
        if not title:
            title, untitled = str(item), untitled + 1
        if title in taken:
            renamed.append(title)
        while title in taken:  # a loop: another item may already hold "<title> [item <id>]" itself
            title = f"{title} [item {item}]"
        taken.add(title)
        unique[item] = title
    notes = [f"{untitled} items have no title; their ids stand in as titles"] if untitled else []
    shared = len(renamed) - renamed.count(NA)
    if shared:
        notes.append(f"{shared} items share a title with a lower item id; they got the suffix ' [item <id>]'")
    if NA in renamed:
        notes.append(f"{renamed.count(NA)} items titled {NA!r}, the name of the embeddings' unknown row, got the "
                     "suffix ' [item <id>]'")
    return unique, notes + _several_titles_note(listed)


def _several_titles_note(listed):
    """A note on item ids listed with more than one title (the first is kept), or none."""
    text = listed.dropna().astype(str).str.strip()
    text = text[text != ""]
    distinct = text.groupby(level=0).nunique()
    several = distinct.index[distinct > 1]
    if len(several) == 0:
        return []
    shown = list(dict.fromkeys(text.loc[[several[0]]]))
    return [f"{len(several)} item ids are listed with more than one title (item {several[0]}: {shown[0]!r}, then "
            f"{shown[1]!r}); the first title of each is kept"]


def _refuse_reserved_users(users, source):
    """Refuse the user id "#na#": the model's vocabulary keeps that name for its unknown row."""
    if pd.api.types.is_numeric_dtype(users):
        return
    reserved = users == NA
    if reserved.any():
        raise DataError(f"{source} has the user id {NA!r} ({_rows(reserved)}), the name the model keeps for "
                        "unknown users; rename that user in the file (any other id will do)")


def _require(folder, names, fix):
    """Raise DataError naming the first of `names` missing from `folder`."""
    for name in names:
        if not (folder / name).is_file():
            raise DataError(f"{folder} has no {name}; {fix}")


def _read(file, **kwargs):
    """pd.read_csv, with pandas' and the file system's errors turned into DataError."""
    try:
        return pd.read_csv(file, **kwargs)
    except FileNotFoundError as error:
        raise DataError(f"{file} does not exist; check the path") from error
    except pd.errors.EmptyDataError as error:
        raise DataError(f"{Path(file).name} is empty; point at a file with ratings in it") from error
    except UnicodeDecodeError as error:
        raise DataError(f"{Path(file).name} is not UTF-8 text ({error}); re-save it as UTF-8") from error
    except (ValueError, OSError) as error:
        raise DataError(f"{Path(file).name} could not be read ({error}); check that it is the MovieLens file it "
                        "is named for") from error


def _read_table(path, sep=None, header=None, columns=None, encoding=None, default_columns=(), id_columns=()):
    """(table, its `delimited.Reading`) of a delimited text file, or (table, None) of a .parquet one.

    Whole-number ids past 2**53 are read again as text (pyarrow makes them floats, and rounds them)."""
    if path.suffix.lower() == ".parquet":
        return _read_parquet(path), None
    reading = delimited.sniff(path, sep, header, columns, encoding, default_columns)
    try:
        table = delimited.read(path, reading)
    except UnicodeDecodeError:  # the sample was UTF-8, a later line is not: Latin-1 reads every byte
        reading.encoding = "latin-1"
        table = delimited.read(path, reading)
    rounded = [name for name in id_columns if name in table.columns and pd.api.types.is_float_dtype(table[name])
               and (table[name].abs() >= 2.0**53).any()]
    if rounded:
        exact = delimited.read(path, reading, string_columns=rounded)
        for name in rounded:
            digits = exact[name].str.strip().str.fullmatch(r"[+-]?\d+").all()
            table[name] = exact[name] if digits else table[name]
    return table, reading


def _read_parquet(path):
    """Read a Parquet table."""
    if not path.is_file():
        raise DataError(f"{path} does not exist; check the path")
    try:
        table = pd.read_parquet(path)
        import pyarrow  # read_parquet needed it

        pyarrow.default_memory_pool().release_unused()  # the Arrow copy is gone: half a GB at 25M ratings
        return table
    except ImportError as error:
        raise DataError(f"reading {path.name} needs pyarrow; pip install 'hfcf[train]' or save it as CSV") from error
    except (ValueError, OSError) as error:
        raise DataError(f"{path.name} could not be read as Parquet ({error}); check the file") from error


def _pick_columns(table, wanted, source):
    """Rename {ours: (theirs, option)} columns of `table`, raising MissingColumnError that names a likely fix."""
    found = [str(column) for column in table.columns]
    for ours, (theirs, option) in wanted.items():
        if theirs not in table.columns:
            unused = [column for column in found if column not in {name for name, _ in wanted.values()}]
            guess = _guess_column(unused, ours, found)
            raise MissingColumnError(f"{source} has no column {theirs!r} (columns found: {', '.join(found)}); "
                                     f"pass {option} {shlex.quote(guess)}", source, theirs, found)
    return pd.DataFrame({ours: table[theirs] for ours, (theirs, _) in wanted.items()}).reset_index(drop=True)


def _guess_column(columns, ours, found=()):
    """The column of `columns` that most likely holds `ours`: named for it alone ("Book-Rating" is no item), at its
    place in user,item,rating,timestamp order among `found`, named for it, the only one left; else "NAME"."""
    def named(column, name):
        return any(word in column.lower() for word in COLUMN_WORDS[name])

    alone = [column for column in columns if named(column, ours)
             and not any(named(column, other) for other in COLUMN_WORDS if other != ours)]
    place = list(COLUMN_WORDS).index(ours)
    placed = [found[place]] if place < len(found) and found[place] in columns else []
    likely = alone + placed + [column for column in columns if named(column, ours)] + columns[:len(columns) == 1]
    return likely[0] if likely else "NAME"


def _guess_columns(table, ours):
    """{ours: a likely column of `table`, quoted for a shell}, each column guessed once, in the order of `ours`."""
    left, guesses = [str(column) for column in table.columns], {}
    for name in ours:
        guesses[name] = _guess_column(left, name)
        left = [column for column in left if column != guesses[name]]
    return {name: shlex.quote(guess) for name, guess in guesses.items()}


def _require_movielens_columns(folder, tables):
    """Refuse a ratings.csv and movies.csv that are not MovieLens's, giving the train.py flags that read them as a
    ratings file and a titles table."""
    for name, table in tables.items():
        missing = [column for column in MOVIELENS_CSV_COLUMNS[name].values() if column not in table.columns]
        if missing:
            ratings, titles = (_guess_columns(tables[file], MOVIELENS_CSV_COLUMNS[file]) for file in tables)
            flags = (f"--data {shlex.quote(str(folder / 'ratings.csv'))} --user-col {ratings['user']} --item-col "
                     f"{ratings['item']} --rating-col {ratings['rating']} --titles "
                     f"{shlex.quote(str(folder / 'movies.csv'))} --titles-item-col {titles['item']} --title-col "
                     f"{titles['title']}")
            raise DataError(f"{folder} holds a ratings.csv and a movies.csv, but not MovieLens's: {name} has no "
                            f"column {missing[0]!r} (columns found: {', '.join(map(str, table.columns))}); read "
                            f"them as a ratings file and a titles table, naming their columns: {flags}")


def _refuse_movielens_file(path, table, wanted, reading):
    """Refuse a MovieLens folder's ratings file given alone, headerless or without the columns asked for: its titles
    are in the folder."""
    format = _folder_format(path.parent)
    headerless = reading is not None and not reading.header
    if format and path.name == MOVIELENS_RATINGS_FILES[format] and \
            (headerless or any(theirs not in table.columns for theirs, _ in wanted.values())):
        raise DataError(f"{path.name} is the ratings file of a MovieLens folder ({format}), which hfcf reads with "
                        f"its titles; pass the folder that holds it: --data {shlex.quote(str(path.parent))}")


def _check_read_as_table(table, path, reading, sep_given=None):
    """Refuse a text table that read as a single column: its fields are not separated by the separator used."""
    if reading is None or len(table.columns) > 1:
        return
    found = delimited.detect_sep(path, reading.encoding)
    used = delimited.SEPARATORS.get(reading.sep, repr(reading.sep))
    if sep_given is not None and found not in (None, reading.sep):
        fix = f"pass --sep {delimited.quoted(found)} (or leave --sep out to detect it)"
    elif sep_given is not None:
        fix = "pass --sep with the character between its fields"
    else:
        fix = "separate its fields by commas, tabs, semicolons or whitespace, or pass --sep with the character used"
    raise DataError(f"{path.name} reads as one column ({str(table.columns[0])[:80]!r}) when split on {used}; {fix}")


def _check_y_range(y_range):
    """Return y_range as a (low, high) float pair, or None."""
    if y_range is None:
        return None
    try:
        low, high = (float(bound) for bound in y_range)
    except (TypeError, ValueError) as error:
        raise DataError(f"y_range must be two numbers (got {y_range!r}); pass --y-range 0,5.5") from error
    if not np.isfinite([low, high]).all() or low >= high:
        raise DataError(f"y_range must be two finite numbers, low < high (got {y_range!r}); pass --y-range 0,5.5")
    return low, high


def _check_ids(ids, column, source):
    """Refuse missing or blank ids; return them as integers when all are whole numbers (`_normalise_ids`), else
    as str."""
    blank = ids.isna()
    if not pd.api.types.is_numeric_dtype(ids):
        blank |= ids.astype(str).str.strip() == ""
    if blank.any():
        raise DataError(f"{source} has {blank.sum()} rows with no {column} id ({_rows(blank)}); "
                        f"drop or fill those rows, or pass --{column}-col with the column that holds {column} ids")
    return _normalise_ids(ids)


def _normalise_ids(ids):
    """Ids that are all whole numbers become int32 when they fit, else int64 (`_compact`), else (past int64) their
    exact decimal text; any others str; missing ids are left for validate."""
    if ids.isna().any():
        return ids
    if pd.api.types.is_integer_dtype(ids):
        if ids.dtype == np.int32:
            return ids  # already compact, no copy
        # uint64 past int64 would wrap to negative ids; their decimal text keeps each one
        return ids.astype(str) if ids.max() > np.iinfo(np.int64).max else _compact(ids.astype("int64"))
    if pd.api.types.is_float_dtype(ids):
        if not (np.isfinite(ids).all() and (ids == ids.round()).all()):
            return ids.astype(str)
        if (ids.abs() < 2.0**63).all():
            return _compact(ids.astype("int64"))
        return ids.map(lambda value: str(int(value)))  # 1e19 would overflow int64 to one shared id
    text = ids.astype(str).str.strip()
    return _compact(text.astype("int64")) if text.str.fullmatch(r"[+-]?\d{1,18}").all() else text


def _compact(ids):
    """int64 ids as int32 when they fit (every MovieLens id does): half the memory at 25M ratings, and the same
    values, vocabularies and fingerprints."""
    fits = len(ids) == 0 or (ids.min() >= np.iinfo(np.int32).min and ids.max() <= np.iinfo(np.int32).max)
    return ids.astype("int32") if fits else ids


def _check_ratings(values, y_range, source):
    """Return ratings as float64, refusing non-numbers, non-finite values and values outside y_range."""
    ratings = pd.to_numeric(values, errors="coerce").astype("float64")
    bad = ~np.isfinite(ratings)
    if bad.any():
        examples = ", ".join(repr(value) for value in values[bad].head(3))
        raise DataError(f"{source} has {bad.sum()} ratings that are not finite numbers ({_rows(bad)}: {examples}); "
                        "fix or drop those rows, or pass --rating-col with the column that holds the ratings")
    if y_range is not None and (ratings.min() < y_range[0] or ratings.max() > y_range[1]):
        low, high = _outward(min(y_range[0], ratings.min()), max(y_range[1], ratings.max()))
        raise DataError(f"{source} has ratings from {ratings.min():g} to {ratings.max():g}, outside y_range "
                        f"({y_range[0]:g}, {y_range[1]:g}); pass --y-range {low:.15g},{high:.15g} or a wider range")
    return ratings


def _outward(low, high):
    """(low, high) rounded outwards to a tenth of the span's order of magnitude: short bounds that still hold both."""
    step = 10.0 ** (np.floor(np.log10(high - low)) - 1) if high > low else 1.0
    digits = max(0, int(-np.log10(step)))
    rounded_low, rounded_high = round(np.floor(low / step) * step, digits), round(np.ceil(high / step) * step, digits)
    # rounding to `digits` can only step back inside by a float's last bit: one step more settles it
    return (rounded_low if rounded_low <= low else rounded_low - step,
            rounded_high if rounded_high >= high else rounded_high + step)


def _seconds(values, source):
    """Timestamps as float seconds since 1970 (NaN where absent): numbers pass through, dates convert."""
    if not pd.api.types.is_datetime64_any_dtype(values):
        numbers = pd.to_numeric(values, errors="coerce").astype("float64")
        if numbers.notna().sum() == values.notna().sum():
            return numbers
        try:
            values = pd.to_datetime(values, utc=True, format="mixed")
        except (ValueError, TypeError) as error:
            raise DataError(f"{source} has timestamps that are neither numbers nor dates ({error}); "
                            "fix them or leave out --timestamp-col") from error
    dates = pd.to_datetime(values, utc=True)
    return (dates - pd.Timestamp(0, tz="UTC")).dt.total_seconds().astype("float64")


def _has_repeated_pairs(users, items):
    """Whether any (user, item) pair repeats: one int64 key per row, sorted in place, a tenth of the memory and
    time of pandas' two-column `duplicated` on 25M rows (the common, clean case; `duplicated` then finds the rows).
    Signed whole-number ids are the key's digits as they are; others are factorized first (8 bytes a row more)."""
    users, items = (ids.to_numpy() if pd.api.types.is_signed_integer_dtype(ids) else pd.factorize(ids)[0]
                    for ids in (users, items))
    user_low, item_low = int(users.min()), int(items.min())
    width = int(items.max()) - item_low + 1
    if (int(users.max()) - user_low + 1) * width >= 2**63:  # ids too spread out to share one int64
        users, items = pd.factorize(users)[0], pd.factorize(items)[0]
        user_low, item_low, width = 0, 0, int(items.max()) + 1
    keys = users.astype(np.int64)
    keys -= user_low
    keys *= width
    keys += items
    keys -= item_low
    keys.sort()
    return bool((keys[1:] == keys[:-1]).any())


def _merge_duplicates(df, policy, source):
    """Apply the on_duplicate policy to repeated (user, item) pairs; return (frame, notes)."""
    if not _has_repeated_pairs(df["user"], df["item"]):
        return df, []
    repeated = df.duplicated(["user", "item"], keep=False)
    pairs = df.loc[repeated, ["user", "item"]].drop_duplicates()
    rows = int(repeated.sum())
    if policy == "error":
        user, item = pairs.iloc[0]
        raise DataError(f"{source} has {len(pairs)} duplicate (user, item) pairs in {rows} rows (first: user {user}, "
                        f"item {item}); pass --on-duplicate last to keep the latest rating of each, "
                        "or --on-duplicate mean to average them")
    if policy == "last":
        latest = df.sort_values("timestamp", kind="stable", na_position="first")
        kept = latest.drop_duplicates(["user", "item"], keep="last").index
        return df[df.index.isin(kept)], [f"merged {len(pairs)} duplicate (user, item) pairs ({rows} rows) "
                                         "by keeping the latest rating"]
    groups = df.groupby(["user", "item"], sort=False)
    df = df.assign(rating=groups["rating"].transform("mean"), timestamp=groups["timestamp"].transform("max"))
    return df.drop_duplicates(["user", "item"]), [f"merged {len(pairs)} duplicate (user, item) pairs "
                                                  f"({rows} rows) by mean"]


def _balanced_choices(rng, user_cluster, item_cluster, per_user, own_share):
    """(user, item) index arrays: each user rates `per_user` distinct items, about `own_share` of them from their
    own cluster (as many as it has), the least-rated items first so every item gets its share of ratings."""
    counts = np.zeros(len(item_cluster))
    users, items = [], []
    for user, cluster in enumerate(user_cluster):
        own = item_cluster == cluster
        n_own = min(int(own.sum()), round(per_user * own_share))
        n_other = per_user - n_own
        if n_other > (~own).sum():  # a cluster-only catalogue: take the rest from the user's own cluster
            n_own, n_other = per_user - int((~own).sum()), int((~own).sum())
        chosen = []
        for pool, size in ((own, n_own), (~own, n_other)):
            # The least-rated items of the pool first, random among equals.
            candidates = np.flatnonzero(pool)
            chosen.append(candidates[np.argsort(counts[candidates] + rng.random(len(candidates)))[:size]])
        chosen = np.sort(np.concatenate(chosen))
        counts[chosen] += 1
        users.append(np.full(per_user, user))
        items.append(chosen)
    return np.concatenate(users), np.concatenate(items)


def _detect_format(source):
    """The format of `source`, from its name or the files a folder holds."""
    if source is None:
        return "ml-100k"
    if str(source) == "synthetic":
        return "synthetic"
    path = Path(source).expanduser()
    if path.is_file():
        return "table"
    if not path.is_dir():
        raise DataError(f"{source} does not exist; pass a MovieLens folder, a ratings file or 'synthetic'")
    format = _folder_format(path)
    if format is not None:
        return format
    raise DataError(f"{path} holds none of u.data (MovieLens 100k), ratings.csv with movies.csv (latest-small) "
                    "or ratings.dat (1M); pass one of those folders, or a ratings file with --user-col, "
                    "--item-col and --rating-col")


def _folder_format(path):
    """The MovieLens format of folder `path`, from the files it holds, or None."""
    if (path / "u.data").is_file():
        return "ml-100k"
    if (path / "ratings.csv").is_file() and (path / "movies.csv").is_file():
        return "ml-latest-small"
    if (path / "ratings.dat").is_file():
        return "ml-1m"
    return None


def _rows(mask):
    """The first few 1-based data-row numbers where `mask` is true, for error messages."""
    numbers = np.flatnonzero(np.asarray(mask)) + 1
    more = ", ..." if len(numbers) > 5 else ""
    return "data rows " + ", ".join(map(str, numbers[:5])) + more
