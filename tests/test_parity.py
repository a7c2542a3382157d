"""The saved safetensors are fastai's own weights: they load back into fastai's modules and into hfcf.nn alike."""
import threading

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hfcf import artifacts, scoring
from hfcf import nn as hfnn
from hfcf.kinds import KINDS, scorer

fastai_collab = pytest.importorskip("fastai.collab")
training = pytest.importorskip("hfcf.training")


def fastai_module(kind, settings, n_users, n_items, y_range):
    """A fresh fastai module of the saved shape, as collab_learner would build it."""
    if kind == "dot":
        return fastai_collab.EmbeddingDotBias(settings["n_factors"], n_users, n_items, y_range=tuple(y_range))
    from fastai.tabular.model import tabular_config

    emb_szs = [(n_users, settings["user_size"]), (n_items, settings["item_size"])]
    return fastai_collab.EmbeddingNN(emb_szs, list(settings["layers"]),
                                     **tabular_config(bn_cont=False, use_bn=settings.get("batchnorm", True),
                                                      y_range=tuple(y_range)))


def held_out(folder, split, rows=1000):
    valid = split.valid.iloc[:rows]
    x, y = training.encode(valid, folder.users, folder.items)
    return x, y


def check_parity(out, fitted_models, split, rows=1000):
    folder = artifacts.load(out)
    x, y = held_out(folder, split, rows)
    assert len(x) == min(rows, len(split.valid))
    for kind in ("dot", "nn"):  # fastai trains hfcf's own TopNModel: see test_top_n_learner_and_folder_agree
        fitted = fitted_models[kind]
        learner_predictions, _ = fitted.learner.get_preds(dl=training.TensorBatches(x, y, 256, shuffle=False))
        learner_predictions = learner_predictions.flatten().numpy()

        state = load_file(out / KINDS[kind].weights_file)
        settings = folder.config["models"][kind]
        module = fastai_module(kind, settings, len(folder.users), len(folder.items), folder.y_range)
        module.load_state_dict(hfnn.to_fastai_keys(state, KINDS[kind].fastai_names(settings)), strict=True)
        with torch.no_grad():
            fastai_predictions = module.eval()(x).flatten().numpy()
        ours = scorer(kind, folder.weights[kind], folder.y_range).predict(x[:, 0].numpy(), x[:, 1].numpy())

        np.testing.assert_allclose(fastai_predictions, learner_predictions, rtol=0, atol=1e-6, err_msg=kind)
        np.testing.assert_allclose(ours, fastai_predictions, rtol=0, atol=1e-5, err_msg=kind)
        assert np.ptp(ours) > 0.5, f"{kind} predictions are nearly constant; the check would prove little"


def test_parity_on_synthetic_model(synthetic_model):
    out, _, split, fitted = synthetic_model
    check_parity(out, fitted, split)


def test_parity_of_an_nn_without_batchnorm(synthetic_dataset, tmp_path):
    """`batchnorm: false` (the large-data nn): fastai's Linear layers then carry biases, and the folder keeps them."""
    import dataclasses

    from hfcf import pipeline

    settings = {"dot": dataclasses.replace(KINDS["dot"].base, epochs=8, bs=256, lr=1e-2),
                "nn": dataclasses.replace(KINDS["nn"].base, epochs=8, bs=256, lr=1e-2, batchnorm=False)}
    split = pipeline.make_split(synthetic_dataset, "random", 0.2, 0)
    config, fitted = pipeline.train_and_save(synthetic_dataset, split, tmp_path / "model", kinds=("dot", "nn"),
                                     settings=settings, seed=0, log=lambda *_: None)
    assert config["models"]["nn"]["batchnorm"] is False and "batchnorm" not in config["models"]["dot"]
    assert "hidden.0.linear.bias" in artifacts.load(tmp_path / "model").weights["nn"]
    check_parity(tmp_path / "model", fitted, split)


@pytest.mark.integration
def test_parity_on_movielens_100k(ml100k_model):
    out, _, split, _, fitted = ml100k_model
    check_parity(out, fitted, split, rows=1000)


def test_top_n_learner_and_folder_agree(synthetic_model):
    """The saved user vectors are the learner's encoding of each user's training ratings, and the served scores
    are the learner's model's scores."""
    from hfcf import Recommender

    out, _, split, fitted = synthetic_model
    learner = fitted["topn"].learner
    rec = Recommender.from_pretrained(out, model="topn")
    histories = training.Histories.from_frame(split.train, rec.users, rec.items, rec.folder.y_range)
    rows = torch.arange(1, len(rec.users))
    with torch.no_grad():
        vectors = learner.model.eval().encode(*histories.batch(rows))
        expected = learner.model.scores(vectors).numpy()
    np.testing.assert_allclose(rec.folder.weights["topn"]["user_vectors"][1:], vectors.numpy(), atol=1e-6)
    np.testing.assert_allclose(rec.scorer.scores_for(rows.numpy()), expected, atol=1e-5)
    assert np.ptp(expected) > 0.5


def test_key_maps_round_trip():
    dot, names = hfnn.DotModel(5, 7, 3, (0, 5.5)), KINDS["dot"].fastai_names({})
    assert hfnn.from_fastai_keys("dot", hfnn.to_fastai_keys(dot.state_dict(), names), names).keys() == \
        dot.state_dict().keys()
    neural, names = hfnn.NeuralModel(5, 7, 4, 6, [8, 4], (0, 5.5)), KINDS["nn"].fastai_names({"layers": [8, 4]})
    fastai_names = hfnn.to_fastai_keys(neural.state_dict(), names)
    assert "layers.2.0.bias" in fastai_names and "layers.1.2.running_var" in fastai_names
    with pytest.raises(KeyError, match="bn_cont"):
        hfnn.from_fastai_keys("nn", {**fastai_names, "bn_cont.weight": torch.zeros(0)}, names)
    plain = hfnn.NeuralModel(5, 7, 4, 6, [8, 4], (0, 5.5), batchnorm=False).state_dict()
    names = KINDS["nn"].fastai_names({"layers": [8, 4], "batchnorm": False})
    fastai_names = hfnn.to_fastai_keys(plain, names)
    assert "layers.1.0.bias" in fastai_names and not any("running" in key for key in fastai_names)
    assert hfnn.from_fastai_keys("nn", fastai_names, names).keys() == plain.keys()


def random_module(kind, n_users=9, n_items=13, batchnorm=True):
    """A torch module of `kind` with random weights, BatchNorm statistics included (not the identity)."""
    torch.manual_seed(0)
    settings = {"n_factors": 4, "user_size": 5, "item_size": 3, "layers": [8, 6], "batchnorm": batchnorm}
    module = KINDS[kind].reference_module(settings, n_users, n_items, (0.5, 5.5))
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) + 0.1 if "running_var" in name else torch.randn_like(tensor))
    return settings, module.eval()


@pytest.mark.parametrize("kind, shared", [("dot", False), ("nn", True), ("topn", True)])
def test_rankings_over_a_large_table_are_shared_out(kind, shared, monkeypatch):
    """The nn and top-N rankings read a whole table per request, in ranges on two threads (the nn's in blocks that
    stay in a core's cache); the dot model ranks in one matrix product."""
    from hfcf.kinds import nn as nn_kind

    monkeypatch.setattr(scoring, "THREADS", 2)
    monkeypatch.setattr(scoring, "PARALLEL_FROM", 1)
    monkeypatch.setattr(nn_kind, "RANKING_BLOCK", 24)  # 3 titles a block at 8 units: several blocks, a short last
    calls = []
    monkeypatch.setattr(scoring, "_pool", lambda real=scoring._pool: calls.append(1) or real())
    _, module = random_module(kind)
    found = scorer(kind, module.state_dict(), (0.5, 5.5))
    np.testing.assert_allclose(found.scores_for(np.arange(9)), KINDS[kind].reference_scores(module, 9, 13),
                               atol=1e-5)
    if kind == "topn":  # a newcomer's ranking: one product over the output table, shared out
        vector, scores = found.fold_in(np.array([1, 2]), np.array([5.0, 3.0]))
        np.testing.assert_allclose(scores, vector @ found.outputs.T + found.bias, atol=1e-5)
    assert bool(calls) == shared


def test_in_parallel_covers_every_row_once_in_one_range_per_thread(monkeypatch):
    monkeypatch.setattr(scoring, "THREADS", 2)
    calls = []

    def task(start, end):
        calls.append((start, end, threading.current_thread() is threading.main_thread()))

    scoring.in_parallel(task, 7, scoring.PARALLEL_FROM - 1)
    assert calls == [(0, 7, True)]  # small work stays on the calling thread
    calls.clear()
    scoring.in_parallel(task, 7, scoring.PARALLEL_FROM)
    assert sorted(calls) == [(0, 3, True), (3, 7, False)]  # the caller takes the first range, a helper the rest
    matrix = np.arange(35, dtype=np.float32).reshape(7, 5)
    monkeypatch.setattr(scoring, "PARALLEL_FROM", 1)
    np.testing.assert_array_equal(scoring.matvec(matrix, np.ones(5, np.float32)), matrix.sum(1))


@pytest.mark.parametrize("batchnorm", [True, False])
def test_nn_fold_in_matches_torch_adam_on_the_frozen_network(batchnorm):
    """NeuralScorer.fold_in backpropagates by hand; torch autograd + torch.optim.Adam is the reference."""
    _, module = random_module("nn", batchnorm=batchnorm)
    rows, ratings, l2 = np.array([2, 5, 7]), np.array([5.0, 1.0, 4.0], dtype=np.float32), 0.3
    vector, scores = scorer("nn", module.state_dict(), (0.5, 5.5)).fold_in(rows, ratings, l2)

    _, item_part, user_weight = (part.detach() for part in module.projections())
    start = module.user_embedding.weight.detach()[1:].mean(0)
    theirs = start.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([theirs], lr=0.05)
    for _ in range(200):
        optimizer.zero_grad()
        predicted = module.head(item_part[rows] + theirs @ user_weight.T)
        loss = ((predicted - torch.as_tensor(ratings)) ** 2).mean() + l2 * 1e-2 * ((theirs - start) ** 2).sum()
        loss.backward()
        optimizer.step()
    assert np.abs(vector - start.numpy()).max() > 0.1  # it moved: the comparison below proves something
    np.testing.assert_allclose(vector, theirs.detach().numpy(), atol=1e-4)
    with torch.no_grad():
        np.testing.assert_allclose(scores, module.head(item_part + theirs @ user_weight.T).numpy(), atol=1e-4)
