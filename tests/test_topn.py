"""The top-N model: its loss, what it recovers from planted choices, exact fold-in, reasons that are true, and
its answers on MovieLens 100k."""
import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch

from hfcf import Recommender
from hfcf import nn as hfnn

training = pytest.importorskip("hfcf.training")


@pytest.fixture(scope="module")
def rec(synthetic_model, synthetic_dataset):
    return Recommender.from_pretrained(synthetic_model[0]).attach_history(synthetic_dataset.ratings)


@pytest.fixture(scope="module")
def truth(synthetic_dataset):
    return synthetic_dataset.truth


def cluster_share(titles, cluster, truth):
    return np.mean([truth["item_cluster"][t] == cluster for t in titles])


# --- the loss ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_users", [3, 12])  # fewer users than factors scores densely; more uses the Gram matrix
def test_choice_loss_is_the_squared_error_over_the_whole_catalogue(n_users):
    torch.manual_seed(0)
    model = hfnn.TopNModel(n_users, 9, n_factors=6)
    torch.nn.init.normal_(model.item_bias.weight)
    vectors = torch.randn(n_users, 6)
    chosen = torch.rand(n_users, 9) < 0.3
    owners, targets = torch.nonzero(chosen, as_tuple=True)
    expected = ((chosen.float() - model.scores(vectors)) ** 2).sum() / n_users
    torch.testing.assert_close(training.ChoiceLoss(model)(vectors, targets, owners), expected, rtol=1e-5, atol=1e-5)


def test_a_user_vector_is_the_normalised_rating_weighted_sum_of_their_titles():
    model = hfnn.TopNModel(2, 4, n_factors=3)
    items, weights, offsets = torch.tensor([1, 3, 2]), torch.tensor([3.0, 4.0, 2.0]), torch.tensor([0, 2])
    vectors = model.eval().encode(items, weights, offsets)
    inputs = model.item_inputs.weight.detach()
    torch.testing.assert_close(vectors[0], (0.6 * inputs[1] + 0.8 * inputs[3]).detach())
    torch.testing.assert_close(vectors[1], inputs[2])


# --- planted structure: each user's choices fall mostly in their cluster -----------------------------------------
def test_the_default_model_is_the_top_n_one_with_dot_ratings_beside(rec):
    assert rec.model == "topn" and rec.rating_model == "dot"


def test_it_recovers_each_clusters_titles(rec, truth, synthetic_dataset):
    ratings = synthetic_dataset.ratings
    shares = []
    for user, cluster in list(truth["user_cluster"].items())[:60]:
        top = rec.recommend(user, n=10)
        assert not set(top["title"]) & set(ratings.loc[ratings["user"] == user, "title"])
        assert top["score"].is_monotonic_decreasing
        shares.append(cluster_share(top["title"], cluster, truth))
    assert np.mean(shares) > 0.95
    neighbours = [cluster_share(rec.similar(title, 5)["title"], cluster, truth)
                  for title, cluster in list(truth["item_cluster"].items())[:40]]
    assert np.mean(neighbours) > 0.9


def test_a_newcomer_who_rated_one_cluster_gets_that_cluster(rec, truth):
    for cluster in range(4):
        liked = [t for t, c in truth["item_cluster"].items() if c == cluster][:3]
        picks = rec.fold_in({t: 4.5 for t in liked}, n=10).recommendations
        assert cluster_share(picks["title"], cluster, truth) == 1.0
        assert {reason for cell in picks["because"] for reason in cell.split("; ")} <= set(liked)


def test_fold_in_is_exactly_how_known_users_were_encoded(rec, synthetic_model):
    _, _, split, _ = synthetic_model
    stored = rec.folder.weights["topn"]["user_vectors"]
    for user, rated in list(split.train.groupby("user"))[:20]:
        folded = rec.fold_in(dict(zip(rated["title"], rated["rating"])))
        np.testing.assert_allclose(folded.user_vector, stored[rec.users.index(user)], atol=1e-5)


def test_reasons_are_the_rated_titles_whose_absence_lowers_the_score_most(rec, synthetic_dataset):
    """Checked against refolding the user without each rated title in turn: the first reason is the title whose
    absence costs the pick most, and its cost is the drop the recommender computed in closed form."""
    ratings = synthetic_dataset.ratings
    for user in rec.users.ids()[:12]:
        rated = ratings[ratings["user"] == user]
        history = dict(zip(rated["title"], rated["rating"]))
        picks = rec.recommend(user, n=3)
        for title, because in zip(picks["title"], picks["because"]):
            assert because and set(because.split("; ")) <= set(history)
            column = rec.items.index(title)
            full = rec.fold_in(history).predicted[column]
            drops = {left_out: full - rec.fold_in({t: r for t, r in history.items() if t != left_out}).predicted[column]
                     for left_out in history}
            first, second = because.split("; ")
            assert max(drops, key=drops.get) == first
            assert drops[first] >= drops[second] > 0 and sorted(drops.values())[-2] == pytest.approx(drops[second])


def test_similar_leaves_out_titles_with_too_few_ratings_and_shows_counts(rec):
    counts = np.asarray(rec.folder.item_counts)
    title = rec.items.keys[1]
    everything = rec.similar(title, n=len(rec.items) - 2, min_ratings=1)
    assert everything["ratings"].tolist() == [counts[rec.items.index(t)] for t in everything["title"]]
    floor = int(np.median(counts[1:]))
    kept = rec.similar(title, n=len(rec.items) - 2, min_ratings=floor)
    assert (kept["ratings"] >= floor).all() and len(kept) == (counts[1:] >= floor).sum() - (counts[1] >= floor)
    with pytest.raises(Exception, match="min_ratings"):
        rec.similar(title, min_ratings=0)


def test_without_a_rating_model_picks_come_without_predicted_ratings(synthetic_model, tmp_path, synthetic_dataset):
    import shutil

    folder = shutil.copytree(synthetic_model[0], tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    for kind in ("dot", "nn"):
        del config["models"][kind]
        (folder / f"{kind}.safetensors").unlink()
    (folder / "config.json").write_text(json.dumps(config))
    alone = Recommender.from_pretrained(folder).attach_history(synthetic_dataset.ratings)
    user = alone.users.ids()[0]
    assert list(alone.recommend(user, 3).columns) == ["title", "score", "ratings", "because"]
    assert list(alone.history(user).columns) == ["title", "rating"]
    with pytest.raises(Exception, match="predicted ratings come from a dot or nn model"):
        alone.predict(user, [alone.items.keys[1]])


# --- MovieLens 100k --------------------------------------------------------------------------------------------
def genre_titles(ml100k, ratings, genre):
    """The titles of one u.item genre, most-rated first."""
    names = (ml100k / "u.genre").read_text().split()
    column = 5 + [name.split("|")[0] for name in names].index(genre)
    catalogue = pd.read_csv(ml100k / "u.item", sep="|", encoding="latin-1", header=None)
    titles = ratings.drop_duplicates("item").set_index("item")["title"]
    counts = ratings["title"].value_counts()
    return sorted((titles[i] for i in catalogue.loc[catalogue[column] == 1, 0] if i in titles.index),
                  key=lambda title: -counts[title])


@pytest.mark.integration
def test_newcomers_with_different_tastes_get_different_picks(ml100k_model, ml100k):
    ratings = ml100k_model[3].ratings
    rec = Recommender.from_pretrained(ml100k_model[0]).attach_history(ratings)
    horror = {title: 5 for title in genre_titles(ml100k, ratings, "Horror")[:3]}
    children = {title: 5 for title in genre_titles(ml100k, ratings, "Children's")[:3]}
    scary, kids = (rec.fold_in(taste).recommendations for taste in (horror, children))
    assert len(set(scary["title"]) & set(kids["title"])) <= 2, (scary, kids)
    assert {r for cell in scary["because"] for r in cell.split("; ")} <= set(horror)


@pytest.mark.integration
def test_movielens_picks_differ_between_users_and_neighbours_are_well_known(ml100k_model):
    out, config, split, dataset, _ = ml100k_model
    rec = Recommender.from_pretrained(out).attach_history(dataset.ratings)
    users = rec.users.ids()[:100]
    lists = [set(rec.recommend(user, 10)["title"]) for user in users]
    overlap = np.mean([len(a & b) / 10 for i, a in enumerate(lists) for b in lists[i + 1:]])
    assert overlap < 0.3, overlap  # the most-rated chart would give everyone nearly the same ten
    assert config["ranking"]["topn"]["precision@10"] > 1.5 * config["ranking"]["popularity"]["precision@10"]
    counts = Counter(dataset.ratings["title"])
    neighbours = rec.similar("Toy Story (1995)", 10)
    assert min(counts[title] for title in neighbours["title"]) >= 20


def test_picks_and_reasons_come_from_the_same_ratings(synthetic_model, synthetic_dataset):
    """With every rating attached (more than the training split the stored vectors saw), the picks are ranked
    from those ratings, so the reasons explain the scores that ranked them."""
    rec = Recommender.from_pretrained(synthetic_model[0]).attach_history(synthetic_dataset.ratings)
    ratings = synthetic_dataset.ratings
    for user in rec.users.ids()[:10]:
        rated = ratings[ratings["user"] == user]
        expected = rec.fold_in(dict(zip(rated["title"], rated["rating"])), n=5).recommendations
        picks = rec.recommend(user, n=5)
        assert picks["title"].tolist() == expected["title"].tolist()
        assert picks["because"].tolist() == expected["because"].tolist()
