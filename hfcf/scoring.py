"""What every model kind's scorer shares: the interface, and numpy helpers that spread a ranking over two threads.
No torch, no fastai: serving without torch keeps the Space small (torch alone is ~280 MB of resident memory and
2 s of import). Each kind's scorer lives with the kind (hfcf.kinds).
"""
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

PAIRS_PER_CHUNK = 1 << 18  # pairwise predictions in chunks: bounded memory at millions of held-out ratings
# A request that reads a whole item table of this many elements (~16k titles x 128) or more is shared by two threads:
# one core alone takes milliseconds over a 60k-title one (BENCHMARKS.md, "Recommender latency").
PARALLEL_FROM = 1 << 21
THREADS = min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


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
    """The interface every kind's scorer provides, on the folder's weights as numpy arrays (`weights`: name -> array,
    the names its kind's `tensors` gives). Rows are embedding rows: row 0 (`#na#`) is scored but never shown."""

    def __init__(self, weights, y_range):
        self.low, self.high = y_range

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
        """The item embeddings that similarity and the PCA map are computed from (kinds with item vectors)."""
        raise NotImplementedError

    def item_biases(self):
        """Every item row's learnt bias (kinds with biases)."""
        raise NotImplementedError

    def squash(self, raw):
        return self.low + (self.high - self.low) / (1 + np.exp(-raw))


def _float(*shape):
    return ("float32", shape)
