"""A kind is its module and one registry line: a biases-only model, defined here alone, trains through train.py,
saves, loads, passes the kind contract and is served by `Recommender` and the app."""
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from hfcf import Recommender, artifacts, kinds, space
from hfcf.errors import DataError
from hfcf.kinds.base import RatingKind, Settings, float32, rating_fit
from hfcf.scoring import Scorer
from test_kinds import check_reference, check_saved_schema, check_scorer

torch = pytest.importorskip("torch")
pytest.importorskip("fastai")
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class BiasSettings(Settings):
    kind = "bias"
    sqr_mom: float = 0.99
    lazy: bool = False


class BiasScorer(Scorer):
    """A user bias plus a title bias, through the sigmoid."""

    def __init__(self, weights, y_range):
        super().__init__(weights, y_range)
        self.user_bias, self.item_bias = weights["user_bias.weight"][:, 0], weights["item_bias.weight"][:, 0]

    def scores_for(self, rows):
        return self.squash(self.user_bias[np.asarray(rows), None] + self.item_bias)

    def users_for_item(self, column):
        return self.squash(self.user_bias + self.item_bias[column])

    def pair_scores(self, user_rows, item_rows):
        return self.squash(self.user_bias[user_rows] + self.item_bias[item_rows])

    def item_biases(self):
        return self.item_bias

    def fold_in(self, rows, ratings, l2):
        scaled = (np.asarray(ratings, float) - self.low) / (self.high - self.low)
        bias = np.sum(np.log(scaled / (1 - scaled)) - self.item_bias[rows]) / (len(rows) + l2)
        return np.array([bias]), self.squash(bias + self.item_bias)


class BiasModel(torch.nn.Module):
    def __init__(self, n_users, n_items, y_range):
        super().__init__()
        self.user_bias, self.item_bias = torch.nn.Embedding(n_users, 1), torch.nn.Embedding(n_items, 1)
        for table in (self.user_bias, self.item_bias):
            torch.nn.init.zeros_(table.weight)  # start at the middle of the range
        self.y_range = tuple(y_range)

    def forward(self, x, items=None):
        users, items = (x[:, 0], x[:, 1]) if items is None else (x, items)
        raw = self.user_bias(users)[..., 0] + self.item_bias(items)[..., 0]
        return torch.sigmoid(raw) * (self.y_range[1] - self.y_range[0]) + self.y_range[0]


class Bias(RatingKind):
    """User and title biases only: the baseline every rating model should beat."""

    name, label, architecture = "bias", "biases only", "BiasModel"
    Settings, Scorer = BiasSettings, BiasScorer
    has_biases, has_item_vectors = True, False
    base = BiasSettings(epochs=5, lr=0.1, wd=0.01, bs=256)

    def tensors(self, settings, n_users, n_items):
        return {"user_bias.weight": float32(n_users, 1), "item_bias.weight": float32(n_items, 1)}

    def settings_text(self, s):
        return f"a user and a title bias, {rating_fit(s)}"

    def card_text(self, implicit):
        return "**bias** — a user bias plus a title bias, squashed into the rating range."

    def files_text(self):
        return "hfcf `BiasModel` (biases only)"

    def make_learner(self, dls, settings, chosen, y_range):
        from fastai.learner import Learner

        common = self.common(settings, y_range)
        model = BiasModel(len(dls.classes["user"]), len(dls.classes["title"]), common.pop("y_range"))
        return Learner(dls, model, **common)

    def export(self, learn, train, chosen, n_users):
        return dict(learn.model.state_dict())

    def reference_module(self, settings, n_users, n_items, y_range):
        return BiasModel(n_users, n_items, y_range)


@pytest.fixture
def enrolled(monkeypatch):
    monkeypatch.setitem(kinds.KINDS, "bias", Bias())  # the one line a kind needs


@pytest.fixture
def trained(enrolled, tmp_path, monkeypatch):
    """train.py --models bias,dot on the synthetic set."""
    monkeypatch.syspath_prepend(str(ROOT))
    import train

    out = tmp_path / "model"
    code = train.main(["--data", "synthetic", "--models", "bias,dot", "--set", "dot.epochs=2", "--set",
                       "bias.bs=128", "--seed", "0", "--out", str(out)])
    assert code == 0
    return out


def test_a_toy_kind_trains_saves_and_loads_through_the_cli(trained):
    folder = artifacts.load(trained)
    assert list(folder.weights) == ["bias", "dot"] and folder.config["models"]["bias"]["bs"] == 128
    metrics = folder.config["metrics"]
    # it learnt what the user+item bias baseline learns (little, on this set), and two rating models make an ensemble
    assert metrics["bias"]["rmse"] < metrics["user+item bias"]["rmse"] + 0.1 and "ensemble" in metrics
    assert "**bias** — a user bias plus a title bias" in (trained / "README.md").read_text()
    check_saved_schema("bias", trained)


def test_a_toy_kind_keeps_the_kind_contract(trained):
    from hfcf import data, pipeline

    split = pipeline.make_split(data.synthetic(), "random", 0.2, 0)
    check_scorer("bias", artifacts.load(trained), split.train)
    check_reference("bias")


def test_a_toy_kind_is_served_by_recommender_and_the_app(trained):
    rec = Recommender.from_pretrained(trained, model="bias")
    user = rec.users.ids()[0]
    picks = rec.recommend(user, 5)
    assert len(picks) == 5 and picks["predicted"].is_monotonic_decreasing
    assert rec.fold_in({rec.items.keys[1]: 5.0}, n=3).recommendations.shape[0] == 3
    assert rec.item_biases()["bias"].is_monotonic_decreasing
    with pytest.raises(DataError, match="no item embeddings"):
        rec.similar(rec.items.keys[1])
    sys.path.insert(0, str(ROOT))
    import app

    recommenders = space.load_recommenders(str(trained))
    assert list(recommenders) == ["dot", "bias"]
    assert [value for _, value in space.model_choices(recommenders, item_vectors=True)] == ["dot"]
    demo = app.build_demo(recommenders)
    assert "biases only" in str(demo.config)


def test_an_app_of_a_kind_without_item_vectors_has_no_similar_tab(trained, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    import train

    out = tmp_path / "alone"
    assert train.main(["--data", "synthetic", "--models", "bias", "--seed", "0", "--out", str(out)]) == 0
    import app

    recommenders = space.load_recommenders(str(out))
    demo = app.build_demo(recommenders)
    tabs = [block.get("props", {}).get("label") for block in demo.config["components"] if block.get("type") == "tabitem"]
    assert "Similar titles" not in tabs and "What to watch next" in tabs
    summary, top, _, _ = space.rate_user(recommenders, recommenders["bias"].users.ids()[0], "bias", 3)
    assert len(top) == 3
