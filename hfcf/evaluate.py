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
    return np.full(n_rows, float(np.mean(train_ratings)))


def fit_biases(users, items, ratings, n_users, n_items, reg_user=15.0, reg_item=10.0, iterations=10):
    """User and item biases around the global mean by alternating ridge steps (Surprise's BaselineOnly ALS).

    `users`/`items` are row indices. Returns (mean, user_bias, item_bias); rows never seen stay 0.
    """
    mean = float(np.mean(ratings))
    user_bias = np.zeros(n_users)
    for _ in range(iterations):
        item_bias = _shrunk_means(items, ratings - mean - user_bias[users], n_items, reg_item)
        user_bias = _shrunk_means(users, ratings - mean - item_bias[items], n_users, reg_user)
    return mean, user_bias, item_bias


def _shrunk_means(rows, values, size, reg):
    """Per-row sum of `values` over (reg + count); 0 for rows with no values."""
    denominator = reg + np.bincount(rows, minlength=size)
    return np.divide(np.bincount(rows, values, size), denominator, out=np.zeros(size), where=denominator > 0)


def bias_only(train_users, train_items, train_ratings, users, items, n_users, n_items, clip=None):
    """Predictions of the user+item bias baseline for (users, items), clipped to the rating scale."""
    mean, user_bias, item_bias = fit_biases(train_users, train_items, np.asarray(train_ratings, float),
                                            n_users, n_items)
    predicted = mean + user_bias[users] + item_bias[items]
    return np.clip(predicted, *clip) if clip else predicted


def precision_ndcg_at_k(ranked, relevant, k=10):
    """Mean precision@k and NDCG@k over users: `ranked[u]` a list of items, `relevant[u]` a set."""
    precisions, ndcgs = [], []
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    for user, items in ranked.items():
        hits = np.array([item in relevant[user] for item in items[:k]], float)
        ideal = discounts[: min(k, len(relevant[user]))].sum()
        precisions.append(hits.sum() / k)
        ndcgs.append((hits * discounts[: len(hits)]).sum() / ideal if ideal else 0.0)
    return float(np.mean(precisions)), float(np.mean(ndcgs))
