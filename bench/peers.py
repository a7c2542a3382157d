"""The peers every hfcf figure stands beside, on the same split: popularity, EASE and implicit's ALS for top-N;
Surprise's BaselineOnly, SVD and SVD++ for rating error. Benchmark-only: implicit and scikit-surprise are never
dependencies of hfcf (`pip install implicit scikit-surprise` into the bench environment; rows are skipped without).

Settings a peer needs (EASE's lambda, ALS's factors and penalty) are chosen on an inner split of the training part
only, as hfcf must choose its own: the held-out side is never looked at until the final score.
"""
import importlib.util
import time

import numpy as np
import scipy.sparse

K = 10
EASE_LAMBDAS = (10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0)
EASE_MAX_TITLES = 20_000  # an items x items inverse: 3.2 GB of float64 at 20k titles
# (factors, regularization, alpha): the one measured best on MovieLens 100k (../shared/DESIGN.md) and two around it.
ALS_SETTINGS = ((32, 1.0, 2.0), (64, 0.1, 1.0), (128, 10.0, 5.0))


def installed(module):
    return importlib.util.find_spec(module) is not None


def matrix(user_rows, item_rows, shape):
    """The 0/1 choice matrix (users x titles, CSR float32) of the training pairs."""
    ones = np.ones(len(user_rows), np.float32)
    return scipy.sparse.csr_matrix((ones, (user_rows, item_rows)), shape=shape)


def top_k(score_block, chosen, users, k=K, block=2048):
    """{user row: its k best title rows}, leaving out title row 0 ("#na#") and what the user chose in training.

    `score_block(rows)` gives the dense scores of a block of user rows, so no users x titles matrix is ever held.
    """
    tops = {}
    for start in range(0, len(users), block):
        rows = np.asarray(users[start:start + block])
        scores = np.array(score_block(rows), dtype=np.float32)
        seen = chosen[rows]
        scores[seen.nonzero()] = -np.inf
        scores[:, 0] = -np.inf
        best = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, best, 1), axis=1, kind="stable")
        tops.update(zip(rows.tolist(), np.take_along_axis(best, order, 1)))
    return tops


def precision(tops, relevant, k=K):
    return float(np.mean([np.isin(tops[row], relevant[row]).sum() / k for row in relevant]))


def popularity(chosen, users):
    counts = np.asarray(chosen.sum(0)).ravel()
    return top_k(lambda rows: np.broadcast_to(counts, (len(rows), len(counts))), chosen, users)


def ease(chosen, users, lam):
    """EASE (Steck 2019): item-item weights B = I - P / diag(P), P = (X'X + lambda I)^-1, zero diagonal."""
    gram = (chosen.T @ chosen).toarray().astype(np.float64)
    gram[np.diag_indices_from(gram)] += lam
    inverse = np.linalg.inv(gram)
    weights = (-inverse / np.diag(inverse)).astype(np.float32)
    np.fill_diagonal(weights, 0.0)
    return top_k(lambda rows: chosen[rows] @ weights, chosen, users)


def als(chosen, users, setting, seed=0):
    """implicit's AlternatingLeastSquares (confidence 1 + alpha x chosen), 15 iterations, on the CPU."""
    from implicit.cpu.als import AlternatingLeastSquares

    factors, regularization, alpha = setting
    model = AlternatingLeastSquares(factors=factors, regularization=regularization, alpha=alpha, iterations=15,
                                    random_state=seed)
    model.fit(chosen, show_progress=False)
    return top_k(lambda rows: model.user_factors[rows] @ model.item_factors.T, chosen, users)


def chosen_on_inner(method, candidates, inner):
    """(best candidate, its inner precision@10): `inner` is (inner training matrix, inner relevant, inner users)."""
    chosen, relevant, users = inner
    scored = [(precision(method(chosen, users, candidate), relevant), candidate) for candidate in candidates]
    best = max(scored, key=lambda pair: pair[0])
    return best[1], best[0]


def top_n_rows(chosen, users, inner):
    """{name: (tops, fit seconds, note)} for popularity, EASE and ALS (each peer's setting chosen on `inner`)."""
    rows = {}
    started = time.perf_counter()
    rows["popularity (training counts)"] = (popularity(chosen, users), time.perf_counter() - started, "")
    if chosen.shape[1] <= EASE_MAX_TITLES:
        started = time.perf_counter()
        lam, inner_p = chosen_on_inner(ease, EASE_LAMBDAS, inner)
        rows["EASE (lambda on the inner split)"] = (ease(chosen, users, lam), time.perf_counter() - started,
                                                    f"lambda {lam:g} (inner P@10 {inner_p:.4f})")
    if installed("implicit"):
        started = time.perf_counter()
        setting, inner_p = chosen_on_inner(als, ALS_SETTINGS, inner)
        rows["implicit ALS (setting on the inner split)"] = (
            als(chosen, users, setting), time.perf_counter() - started,
            "factors {}, regularization {:g}, alpha {:g} (inner P@10 {:.4f})".format(*setting, inner_p))
    return rows


def surprise_rows(train, valid, rating_scale, algorithms=("BaselineOnly", "SVD", "SVDpp"), epochs=None):
    """{name: (predicted ratings of `valid`, fit seconds)} for Surprise's algorithms with their default settings."""
    import surprise

    reader = surprise.Reader(rating_scale=rating_scale)
    trainset = surprise.Dataset.load_from_df(train[["user", "item", "rating"]], reader).build_full_trainset()
    few = {"n_epochs": epochs} if epochs else {}
    made = {"BaselineOnly": lambda: surprise.BaselineOnly(bsl_options=few, verbose=False),
            "SVD": lambda: surprise.SVD(random_state=0, **few), "SVDpp": lambda: surprise.SVDpp(random_state=0, **few)}
    rows = {}
    for name in algorithms:
        algorithm = made[name]()
        started = time.perf_counter()
        algorithm.fit(trainset)
        seconds = time.perf_counter() - started
        rows[f"Surprise {name} (defaults)"] = (
            np.array([algorithm.predict(user, item).est for user, item in zip(valid["user"], valid["item"])]), seconds)
    return rows
