"""Metrics and baselines on tiny inputs whose answers are worked out by hand."""
import numpy as np
import pytest

from hfcf import evaluate


def test_rmse_and_mae():
    assert evaluate.rmse([1, 2, 3], [1, 2, 5]) == pytest.approx(np.sqrt(4 / 3))
    assert evaluate.mae([1, 2, 3], [1, 2, 5]) == pytest.approx(2 / 3)
    assert evaluate.scores([3.0, 4.0], [3.0, 4.0]) == {"rmse": 0.0, "mae": 0.0}


def test_global_mean_predicts_the_training_mean():
    assert evaluate.global_mean([1, 2, 3, 6], 3).tolist() == [3.0, 3.0, 3.0]


def test_biases_recover_a_planted_additive_table():
    """ratings = 3 + user offset + item offset exactly: with no shrinkage the biases reproduce every rating."""
    user_offset, item_offset = np.array([0.0, 0.5, -0.5, 1.0]), np.array([0.0, -1.0, 0.0, 1.0])
    users, items = np.meshgrid(np.arange(1, 4), np.arange(1, 4), indexing="ij")
    users, items = users.ravel(), items.ravel()
    ratings = 3 + user_offset[users] + item_offset[items]
    mean, user_bias, item_bias = evaluate.fit_biases(users, items, ratings, 4, 4, reg_user=0, reg_item=0,
                                                     iterations=50)
    np.testing.assert_allclose(mean + user_bias[users] + item_bias[items], ratings, atol=1e-6)
    assert user_bias[0] == item_bias[0] == 0  # the #na# row is never seen


def test_bias_only_shrinks_rare_items_and_clips_to_the_scale():
    users, items, ratings = np.array([1, 2, 1]), np.array([1, 1, 2]), np.array([5.0, 5.0, 1.0])
    predicted = evaluate.bias_only(users, items, ratings, np.array([1, 2]), np.array([1, 2]), 3, 3, clip=(1, 5))
    assert predicted[0] > predicted[1]  # the item rated 5 twice beats the item rated 1 once
    assert ((predicted >= 1) & (predicted <= 5)).all()
    assert abs(predicted[1] - np.mean(ratings)) < abs(1.0 - np.mean(ratings))  # pulled toward the mean


def test_top_k_quality_by_hand():
    tops = {1: [3, 4, 5], 2: [6, 7, 8]}
    relevant = {1: np.array([3, 5]), 2: np.array([9])}
    quality = evaluate.top_k_quality(tops, relevant, n_items=10, k=3)
    assert quality["precision@3"] == pytest.approx((2 / 3 + 0) / 2, abs=1e-4)
    assert quality["recall@3"] == pytest.approx((2 / 2 + 0) / 2, abs=1e-4)
    ideal = 1 + 1 / np.log2(3)  # two relevant titles: the ideal list puts both first
    assert quality["ndcg@3"] == pytest.approx((1 + 1 / np.log2(4)) / ideal / 2, abs=1e-4)
    assert quality["coverage"] == pytest.approx(6 / 9, abs=1e-4)  # 6 of the 9 real titles (row 0 is #na#)
    assert quality["overlap"] == 0.0
    same = evaluate.top_k_quality({1: [1, 2], 2: [1, 2]}, {1: np.array([1]), 2: np.array([3])}, n_items=4, k=2)
    assert same["overlap"] == 1.0 and same["precision@2"] == pytest.approx(0.25)


def test_ranking_leaves_out_what_each_user_rated_in_training():
    """Scores prefer items 1, 2, 3 for everyone; user 1 rated 1 in training, so their list starts at 2."""
    scores = np.array([9.0, 5.0, 4.0, 3.0, 0.0])  # row 0 (#na#) scores highest and must never be ranked
    quality = evaluate.ranking(lambda rows: np.tile(scores, (len(rows), 1)), np.array([1]), np.array([1]),
                               np.array([1, 2]), np.array([2, 1]), n_items=5, k=1)
    assert quality["precision@1"] == 1.0  # user 1 gets 2 (held out), user 2 gets 1 (held out)


def _additive(rng, n, user_sd, item_sd, noise, n_users=300, n_items=200):
    """`n` ratings 3 + user offset + item offset + noise, with the offsets drawn once per seed."""
    user_offset, item_offset = rng.normal(0, user_sd, n_users), rng.normal(0, item_sd, n_items)
    users, items = rng.integers(1, n_users, n), rng.integers(1, n_items, n)
    return users, items, 3 + user_offset[users] + item_offset[items] + rng.normal(0, noise, n)


@pytest.mark.parametrize("user_sd, item_sd", [(0.0, 0.0), (0.5, 0.5)])
def test_the_bias_baseline_is_never_worse_than_the_global_mean(user_sd, item_sd):
    """With a fixed shrinkage the bias baseline lost to the global mean on sparse, bias-free data.
    Ratings are drawn fresh for scoring, from the same offsets (the same seed's table)."""
    users, items, ratings = _additive(np.random.default_rng(0), 3000, user_sd, item_sd, noise=1.0)
    test_users, test_items, test_ratings = _additive(np.random.default_rng(0), 6000, user_sd, item_sd, noise=1.0)
    test_users, test_items, test_ratings = test_users[3000:], test_items[3000:], test_ratings[3000:]
    biased = evaluate.rmse(evaluate.bias_only(users, items, ratings, test_users, test_items, 300, 200), test_ratings)
    mean = evaluate.rmse(evaluate.global_mean(ratings, len(test_ratings)), test_ratings)
    assert biased <= mean + 1e-9
    if user_sd:  # real offsets: the biases must find them, not fall back to the mean
        assert biased < mean - 0.1
        assert evaluate.choose_shrinkage(users, items, ratings, 300, 200) is not None
