"""Metrics and baselines: one implementation shared by train.py, the tests and bench/."""
import numpy as np


def rmse(predicted, actual):
    """Root mean squared error."""
    return float(np.sqrt(np.mean((np.asarray(predicted, float) - np.asarray(actual, float)) ** 2)))


def mae(predicted, actual):
    """Mean absolute error."""
    return float(np.mean(np.abs(np.asarray(predicted, float) - np.asarray(actual, float))))


def scores(predicted, actual):
    """{"rmse": .., "mae": ..} rounded for a card."""
    return {"rmse": round(rmse(predicted, actual), 4), "mae": round(mae(predicted, actual), 4)}


def global_mean(train_ratings, n_rows):
    """The global-mean baseline: every prediction is the training mean."""
    return np.full(n_rows, float(np.mean(train_ratings, dtype=np.float64)))


def fit_biases(users, items, ratings, n_users, n_items, reg_user=15.0, reg_item=10.0, iterations=10):
    """User and item biases around the global mean by alternating ridge steps (Surprise's BaselineOnly ALS).

    `users`/`items` are row indices. Returns (mean, user_bias, item_bias); rows never seen stay 0.
    """
    mean = float(np.mean(ratings))
    centred = ratings - mean
    # The shrunk denominators are the same every iteration: counted once (at 20M ratings a count is ~0.1 s).
    user_denominator = reg_user + np.bincount(users, minlength=n_users)
    item_denominator = reg_item + np.bincount(items, minlength=n_items)
    user_bias = np.zeros(n_users)
    for _ in range(iterations):
        item_bias = _shrunk_means(items, centred - user_bias[users], item_denominator)
        user_bias = _shrunk_means(users, centred - item_bias[items], user_denominator)
    return mean, user_bias, item_bias


def _shrunk_means(rows, values, denominator):
    """Per-row sum of `values` over its `denominator` (reg + count); 0 for rows with no values."""
    sums = np.bincount(rows, values, len(denominator))
    return np.divide(sums, denominator, out=np.zeros(len(denominator)), where=denominator > 0)


SHRINKAGE = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)  # ratings' worth of pull towards 0 (reg_user = reg_item)
FALLBACK_SHRINKAGE = 15.0  # when a tenth of the ratings is too few to choose on: fit_biases' default for users


def choose_shrinkage(users, items, ratings, n_users, n_items, seed=0, holdout=0.1):
    """The bias regulariser that predicts a random tenth of the training ratings best when fitted on the rest;
    None when no regulariser beats the global mean there (biases that would only add noise).

    The held-out error is U-shaped in the regulariser (too little overfits rare users and titles, too much is
    the mean), so the scan up SHRINKAGE stops once the error rises past its best: 3 to 4 fits, not 7, which at
    20M training ratings is most of the evaluation's time.
    """
    ratings = np.asarray(ratings, float)
    inner = np.random.default_rng(seed).random(len(ratings)) < holdout
    if inner.sum() < 2 or (~inner).sum() < 2:
        return FALLBACK_SHRINKAGE
    fit_users, fit_items, fit_ratings = users[~inner], items[~inner], ratings[~inner]
    best, best_error = None, rmse(np.full(inner.sum(), fit_ratings.mean()), ratings[inner])
    for reg in SHRINKAGE:
        mean, user_bias, item_bias = fit_biases(fit_users, fit_items, fit_ratings, n_users, n_items,
                                                reg_user=reg, reg_item=reg)
        error = rmse(mean + user_bias[users[inner]] + item_bias[items[inner]], ratings[inner])
        if error < best_error:
            best, best_error = reg, error
        elif best is not None:
            break
    return best


def bias_only(train_users, train_items, train_ratings, users, items, n_users, n_items, clip=None):
    """Predictions of the user+item bias baseline for (users, items), clipped to the rating scale.

    Its shrinkage is chosen on a held-out tenth of the training ratings (`choose_shrinkage`), so it is never set
    worse than the global mean by a regulariser that suited another dataset (it is the global mean when no
    shrinkage helps).
    """
    train_users, train_items = np.asarray(train_users), np.asarray(train_items)
    train_ratings = np.asarray(train_ratings, float)
    reg = choose_shrinkage(train_users, train_items, train_ratings, n_users, n_items)
    if reg is None:
        return global_mean(train_ratings, len(users))
    mean, user_bias, item_bias = fit_biases(train_users, train_items, train_ratings, n_users, n_items,
                                            reg_user=reg, reg_item=reg)
    predicted = mean + user_bias[users] + item_bias[items]
    return np.clip(predicted, *clip) if clip else predicted


def ranked_users(test_users, max_users=None, seed=0):
    """The users whose top-k lists are scored: every user with held-out titles, or a seeded sample of `max_users`
    of them (scoring the whole catalogue for 160,000 users would take longer than training)."""
    users = np.unique(test_users)
    if max_users is not None and len(users) > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    return users


def ranking(scores_for, train_users, train_items, test_users, test_items, n_items, k=10, users=None):
    """Top-`k` quality (`top_k_quality`) of the ranking `scores_for(user_rows)` -> (len(user_rows), n_items) over
    the titles each user did not rate in training, for `users` (default: every user with held-out titles).
    Row 0 is never ranked."""
    users = np.unique(test_users) if users is None else users
    seen = group_by_user(train_users, train_items, users)
    tops = {}
    step = max(1, 2**22 // n_items)  # users scored at once: bounds the score matrix to 32 MB
    for start in range(0, len(users), step):
        rows = users[start:start + step]
        scores = np.array(scores_for(rows), dtype=np.float32)  # the scorers' own precision (float64: twice the time)
        scores[:, 0] = -np.inf
        for i, user in enumerate(rows):
            scores[i, seen.get(user, [])] = -np.inf
        top = np.argpartition(-scores, k, axis=1)[:, :k] if k < n_items else np.tile(np.arange(n_items), (len(rows), 1))
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, 1), axis=1, kind="stable"), 1)
        tops.update(zip(rows.tolist(), top))
    return top_k_quality(tops, group_by_user(test_users, test_items, users), n_items, k)


def top_k_quality(tops, relevant, n_items, k=10):
    """Microsoft Recommenders' top-k metrics, means over the users in `relevant` ({user: held-out item rows}, any
    rating counting as relevant); `tops` gives each user's ranked item rows.

    precision@k (hits / k), recall@k (hits / held-out titles), NDCG@k (binary gains, ideal DCG over
    min(k, held-out)), coverage (share of the `n_items - 1` real titles in some user's top k) and overlap (the mean
    share of two users' top k that they have in common: near 1 when everyone is shown the same list).
    """
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    precision, recall, ndcg = [], [], []
    shown = np.zeros(n_items)
    for user, wanted in relevant.items():
        top = np.asarray(tops.get(user, []), dtype=np.int64)[:k]
        np.add.at(shown, top, 1)
        hits = np.zeros(k)
        hits[:len(top)] = np.isin(top, wanted)
        precision.append(hits.sum() / k)
        recall.append(hits.sum() / len(wanted))
        ndcg.append((hits * discounts).sum() / discounts[:min(k, len(wanted))].sum())
    pairs = len(relevant) * (len(relevant) - 1) / 2
    overlap = float((shown * (shown - 1) / 2).sum() / pairs / k) if pairs else 0.0
    return {f"precision@{k}": round(float(np.mean(precision)), 4), f"recall@{k}": round(float(np.mean(recall)), 4),
            f"ndcg@{k}": round(float(np.mean(ndcg)), 4),
            "coverage": round(float((shown[1:] > 0).mean()), 4), "overlap": round(overlap, 4)}


def group_by_user(users, items, wanted):
    """{user row: array of its item rows} for the users in `wanted`."""
    users, items = np.asarray(users), np.asarray(items)
    keep = np.isin(users, wanted)
    users, items = users[keep], items[keep]
    order = np.argsort(users, kind="stable")
    groups, starts = np.unique(users[order], return_index=True)
    return dict(zip(groups.tolist(), np.split(items[order], starts[1:])))
