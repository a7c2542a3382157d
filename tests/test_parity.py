"""The saved safetensors are fastai's own weights: they load back into fastai's modules and into hfcf.nn alike."""
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hfcf import artifacts
from hfcf import nn as hfnn

fastai_collab = pytest.importorskip("fastai.collab")
training = pytest.importorskip("hfcf.training")


def fastai_module(kind, settings, n_users, n_items, y_range):
    """A fresh fastai module of the saved shape, as collab_learner would build it."""
    if kind == "dot":
        return fastai_collab.EmbeddingDotBias(settings["n_factors"], n_users, n_items, y_range=tuple(y_range))
    from fastai.tabular.model import tabular_config

    emb_szs = [(n_users, settings["user_size"]), (n_items, settings["item_size"])]
    return fastai_collab.EmbeddingNN(emb_szs, list(settings["layers"]),
                                     **tabular_config(bn_cont=False, y_range=tuple(y_range)))


def held_out(folder, split, rows=1000):
    valid = split.valid.iloc[:rows]
    x, y = training.encode(valid, folder.users, folder.items)
    return x, y


def check_parity(out, config, split, rows=1000):
    folder = artifacts.load(out)
    x, y = held_out(folder, split, rows)
    assert len(x) == min(rows, len(split.valid))
    for kind in ("dot", "nn"):  # fastai trains hfcf's own TopNModel: see test_top_n_learner_and_folder_agree
        fitted = config["fitted"][kind]
        learner_predictions, _ = fitted.learner.get_preds(dl=training.TensorBatches(x, y, 256, shuffle=False))
        learner_predictions = learner_predictions.flatten().numpy()

        state = load_file(out / artifacts.WEIGHT_FILES[kind])
        n_hidden = len(folder.config["models"][kind].get("layers", []))
        module = fastai_module(kind, folder.config["models"][kind], len(folder.users), len(folder.items),
                               folder.y_range)
        module.load_state_dict(hfnn.to_fastai_keys(kind, state, n_hidden), strict=True)
        with torch.no_grad():
            fastai_predictions = module.eval()(x).flatten().numpy()
        ours = hfnn.predict(folder.modules[kind], x[:, 0], x[:, 1])

        np.testing.assert_allclose(fastai_predictions, learner_predictions, rtol=0, atol=1e-6, err_msg=kind)
        np.testing.assert_allclose(ours, fastai_predictions, rtol=0, atol=1e-5, err_msg=kind)
        assert np.ptp(ours) > 0.5, f"{kind} predictions are nearly constant; the check would prove little"


def test_parity_on_synthetic_model(synthetic_model):
    check_parity(*synthetic_model)


@pytest.mark.integration
def test_parity_on_movielens_100k(ml100k_model):
    out, config, split, _ = ml100k_model
    check_parity(out, config, split, rows=1000)


def test_top_n_learner_and_folder_agree(synthetic_model):
    """The saved user vectors are the learner's encoding of each user's training ratings, and the served scores
    are the learner's model's scores."""
    from hfcf import Recommender

    out, config, split = synthetic_model
    learner = config["fitted"]["topn"].learner
    rec = Recommender.from_pretrained(out, model="topn")
    histories = training.Histories.from_frame(split.train, rec.users, rec.items, rec.folder.y_range)
    rows = torch.arange(1, len(rec.users))
    with torch.no_grad():
        vectors = learner.model.eval().encode(*histories.batch(rows))
        expected = learner.model.scores(vectors).numpy()
    np.testing.assert_allclose(rec.folder.modules["topn"].user_vectors[1:].numpy(), vectors.numpy(), atol=1e-6)
    np.testing.assert_allclose(rec.scorer.scores_for(rows.numpy()), expected, atol=1e-5)
    assert np.ptp(expected) > 0.5


def test_key_maps_round_trip():
    dot = hfnn.DotModel(5, 7, 3, (0, 5.5))
    assert hfnn.from_fastai_keys("dot", hfnn.to_fastai_keys("dot", dot.state_dict())).keys() == dot.state_dict().keys()
    neural = hfnn.NeuralModel(5, 7, 4, 6, [8, 4], (0, 5.5))
    fastai_names = hfnn.to_fastai_keys("nn", neural.state_dict(), n_hidden=2)
    assert "layers.2.0.bias" in fastai_names and "layers.1.2.running_var" in fastai_names
    with pytest.raises(KeyError, match="bn_cont"):
        hfnn.from_fastai_keys("nn", {**fastai_names, "bn_cont.weight": torch.zeros(0)}, n_hidden=2)
