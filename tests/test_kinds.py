"""One contract every registered model kind keeps (as implicit's RecommenderBaseTestMixin): its scorer's answers agree
with each other, with the file it saved and with its torch reference module. A kind enrols by its registry line."""
import json
import struct

import numpy as np
import pytest

from hfcf import artifacts, scoring
from hfcf.kinds import KINDS, preferred, scorer

torch = pytest.importorskip("torch")


def check_scorer(kind, folder, train):
    """The answers of `kind`'s scorer on a trained, loaded folder agree with one another."""
    model = KINDS[kind]
    found = scorer(kind, folder.weights[kind], folder.y_range)
    n_users, n_items = len(folder.users), len(folder.items)
    every = found.scores_for(np.arange(n_users))
    assert every.shape == (n_users, n_items) and np.isfinite(every).all()
    for row in (1, n_users // 2, n_users - 1):
        np.testing.assert_allclose(found.user_scores(row), every[row], rtol=1e-5, atol=1e-5)
    for column in (1, n_items - 1):
        np.testing.assert_allclose(found.users_for_item(column), every[:, column], rtol=1e-5, atol=1e-5)
    if model.predicts_ratings:
        rng = np.random.default_rng(0)
        users, items = rng.integers(1, n_users, 500), rng.integers(1, n_items, 500)
        np.testing.assert_allclose(found.predict(users, items), every[users, items], rtol=1e-5, atol=1e-5)
        assert folder.y_range[0] < every.min() and every.max() < folder.y_range[1]
    if model.encodes_history:  # a known user folded in from their training ratings is the stored user
        user = train["user"].iloc[0]
        mine = train[train["user"] == user]
        _, scores = found.fold_in(folder.items.rows(mine["title"]), mine["rating"].to_numpy(), None)
        np.testing.assert_allclose(scores, every[folder.users.index(user)], rtol=1e-4, atol=1e-4)
    if model.has_item_vectors:
        assert len(found.item_vectors()) == n_items
    if model.has_biases:
        assert found.item_biases().shape == (n_items,)


def check_saved_schema(kind, out):
    """The weights file holds exactly the tensors the kind's schema names for its saved settings."""
    config = json.loads((out / "config.json").read_text())
    vocab = json.loads((out / "vocab.json").read_text())
    data = (out / KINDS[kind].weights_file).read_bytes()
    header = json.loads(data[8:8 + struct.unpack("<Q", data[:8])[0]])
    header.pop("__metadata__")
    dtypes = {"F32": "float32", "I64": "int64"}
    stored = {name: (dtypes[entry["dtype"]], tuple(entry["shape"])) for name, entry in header.items()}
    assert stored == KINDS[kind].tensors(config["models"][kind], len(vocab["users"]), len(vocab["items"]))
    assert config["models"][kind]["architecture"] == KINDS[kind].architecture


def check_reference(kind, batchnorm=True, n_users=9, n_items=13):
    """The numpy scorer gives the torch reference module's scores on the same random weights."""
    model = KINDS[kind]
    torch.manual_seed(0)
    settings = {"n_factors": 4, "user_size": 5, "item_size": 3, "layers": [8, 6], "batchnorm": batchnorm}
    module = model.reference_module(settings, n_users, n_items, (0.5, 5.5))
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) + 0.1 if "running_var" in name else torch.randn_like(tensor))
    module.eval()
    state = module.state_dict()
    expected = {name: (str(t.dtype).removeprefix("torch."), tuple(t.shape)) for name, t in state.items()}
    assert model.tensors(settings, n_users, n_items) == expected  # what a weights file must hold
    found = scorer(kind, state, (0.5, 5.5))
    reference = model.reference_scores(module, n_users, n_items)
    np.testing.assert_allclose(found.scores_for(np.arange(n_users)), reference, atol=1e-5)
    np.testing.assert_allclose(found.users_for_item(4), reference[:, 4], atol=1e-5)
    if model.predicts_ratings:
        users, items = np.arange(n_users).repeat(n_items), np.tile(np.arange(n_items), n_users)
        np.testing.assert_allclose(found.predict(users, items), reference.ravel(), atol=1e-5)


@pytest.mark.parametrize("kind", list(KINDS))
def test_scores_agree_with_each_other(kind, synthetic_model):
    out, _, split, _ = synthetic_model
    check_scorer(kind, artifacts.load(out), split.train)


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_saved_file_matches_the_schema(kind, synthetic_model):
    check_saved_schema(kind, synthetic_model[0])


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("batchnorm", [True, False])
@pytest.mark.parametrize("kind", list(KINDS))
def test_numpy_scorer_matches_the_torch_reference(kind, batchnorm, threads, monkeypatch):
    """Serving runs in numpy (no torch in the Space); torch modules are the reference. With 2 threads every table
    counts as large, so each ranking is shared out in ranges (as a 60k-title one is)."""
    monkeypatch.setattr(scoring, "THREADS", threads)
    monkeypatch.setattr(scoring, "PARALLEL_FROM", 1)
    check_reference(kind, batchnorm)


def test_the_registry_lists_every_kind_once_and_prefers_a_model_of_choices():
    assert len(set(KINDS)) == len(KINDS) and set(preferred()) == set(KINDS)
    first = KINDS[preferred()[0]]
    assert not first.predicts_ratings or all(kind.predicts_ratings for kind in KINDS.values())
    for name, kind in KINDS.items():
        assert kind.name == name == kind.Settings.kind and kind.label and kind.architecture
        assert kind.base.kind == name
