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


def test_precision_and_ndcg_at_k():
    ranked = {"a": ["x", "y", "z"], "b": ["p", "q", "r"]}
    relevant = {"a": {"x", "z"}, "b": set()}
    precision, ndcg = evaluate.precision_ndcg_at_k(ranked, relevant, k=3)
    assert precision == pytest.approx((2 / 3 + 0) / 2)
    ideal = 1 + 1 / np.log2(3)
    assert ndcg == pytest.approx((1 + 1 / np.log2(4)) / ideal / 2)
    perfect, perfect_ndcg = evaluate.precision_ndcg_at_k({"a": ["x", "z", "y"]}, {"a": {"x", "z"}}, k=2)
    assert (perfect, perfect_ndcg) == (1.0, pytest.approx(1.0))
