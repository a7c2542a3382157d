"""A model folder loads only when every file checks out; each fault is an ArtifactError naming the problem."""
import json
import shutil
import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from hfcf import Recommender, artifacts
from hfcf.errors import ArtifactError, DataError


@pytest.fixture
def folder(synthetic_model, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(synthetic_model[0], copy)
    return copy


def edit_json(path, change):
    value = json.loads(path.read_text())
    change(value)
    path.write_text(json.dumps(value))


def rehash(folder, kind="dot"):
    """Make config.json's sha256 agree with a tampered file, so the deeper checks are what must catch it."""
    digest = artifacts.sha256(folder / f"{kind}.safetensors")
    edit_json(folder / "config.json", lambda c: c["models"][kind].update(sha256=digest))


def edit_vocab(folder, change):
    """Edit vocab.json and record its new hash, so the deeper checks are what must catch the edit."""
    edit_json(folder / "vocab.json", change)
    edit_json(folder / "config.json", lambda c: c.update(vocab_sha256=artifacts.sha256(folder / "vocab.json")))


def edit_settings(folder, change, kind="dot"):
    """Edit a model's config entry and drop the weights' record of it (as a folder from an older hfcf has none),
    so the shape checks are what must catch the edit."""
    edit_json(folder / "config.json", lambda c: change(c["models"][kind]))
    rewrite_weights(folder, lambda state: None, kind)


def rewrite_weights(folder, change, kind="dot"):
    state = load_file(folder / f"{kind}.safetensors")
    change(state)
    save_file(state, folder / f"{kind}.safetensors")
    rehash(folder, kind)


def test_round_trip_keeps_every_tensor(synthetic_model):
    out, _, _, fitted_models = synthetic_model
    loaded = artifacts.load(out)
    for kind, fitted in fitted_models.items():
        assert loaded.weights[kind].keys() == fitted.state_dict.keys()
        for key, array in loaded.weights[kind].items():
            np.testing.assert_array_equal(array, fitted.state_dict[key].numpy(), err_msg=key)
    assert loaded.users.keys[0] == loaded.items.keys[0] == "#na#"
    assert sorted(p.name for p in out.iterdir()) == sorted(artifacts.model_files())


def test_config_records_hashes_settings_and_metrics(synthetic_model):
    config = json.loads((synthetic_model[0] / "config.json").read_text())
    assert config["format_version"] == 1 and config["library"] == "hfcf"
    for kind in ("dot", "nn"):
        assert config["models"][kind]["sha256"] == artifacts.sha256(synthetic_model[0] / f"{kind}.safetensors")
        assert set(config["models"][kind]["metrics"]) == {"rmse", "mae"}
    assert {"global mean", "user+item bias", "dot", "nn", "ensemble"} <= set(config["metrics"])


@pytest.mark.parametrize("fault, message", [
    (lambda f: (f / "dot.safetensors").write_bytes((f / "dot.safetensors").read_bytes()[:-100]), "sha256"),
    (lambda f: ((f / "dot.safetensors").write_bytes((f / "dot.safetensors").read_bytes()[:-100]), rehash(f)),
     "truncated"),
    (lambda f: ((f / "dot.safetensors").write_bytes(struct.pack("<Q", 1 << 60) + b"{}"), rehash(f)),
     "header claims"),
    (lambda f: rewrite_weights(f, lambda s: s.update({k: v.double() for k, v in s.items()})), "float64"),
    (lambda f: rewrite_weights(f, lambda s: s.pop("item_bias.weight")), "missing ['item_bias.weight']"),
    (lambda f: rewrite_weights(f, lambda s: s.update(extra=torch.zeros(2))), "extra ['extra']"),
    (lambda f: rewrite_weights(f, lambda s: s["user_factors.weight"].__setitem__((1, 0), float("nan"))),
     "NaN"),
    (lambda f: edit_vocab(f, lambda v: (v["items"].pop(), v["item_counts"].pop())), "need float32"),
    (lambda f: edit_vocab(f, lambda v: v["items"].pop()), "one count"),
    (lambda f: edit_json(f / "vocab.json", lambda v: v["items"].reverse()), "vocab.json does not match the sha256"),
    (lambda f: edit_json(f / "config.json", lambda c: c.update(format_version=2)), "format_version 2"),
    (lambda f: edit_json(f / "config.json", lambda c: c.update(y_range=[5.5, 0])), "low < high"),
    (lambda f: edit_settings(f, lambda s: s.update(n_factors=3)), "need"),
    (lambda f: edit_json(f / "config.json", lambda c: c["models"]["dot"].update(n_factors=3)),
     "not the one dot.safetensors was written with"),
    (lambda f: (f / "config.json").write_text("{not json"), "not valid JSON"),
    (lambda f: (f / "vocab.json").unlink(), "vocab.json is missing"),
    (lambda f: edit_vocab(f, lambda v: v["users"].__setitem__(0, 7)), "'#na#'"),
])
def test_faults_are_refused_at_load(folder, fault, message):
    fault(folder)
    with pytest.raises(ArtifactError) as caught:
        artifacts.load(folder)
    assert message in str(caught.value)


def test_a_folder_of_pickles_is_refused(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    (tmp_path / "model.pkl").write_bytes(b"\x80\x04pickle")
    with pytest.raises(ArtifactError, match=r"never loads pickle.*model.pkl, pytorch_model.bin|"
                                            r"model.pkl, pytorch_model.bin.*never loads pickle"):
        artifacts.load(tmp_path)


def test_missing_folder_is_refused(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        artifacts.load(tmp_path / "nowhere")


def test_save_is_atomic_and_keeps_the_old_folder_on_failure(synthetic_model, tmp_path):
    out, config, _, _ = synthetic_model
    target = tmp_path / "model"
    shutil.copytree(out, target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    loaded = artifacts.load(target)
    bad_weights = {"dot": {"user_factors.weight": object()}}  # save_file fails on it, mid-write
    with pytest.raises(Exception):
        artifacts.save(target, loaded.config, loaded.users, loaded.items, loaded.item_counts, bad_weights, "card")
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"], "no half-built folder is left beside it"


def test_check_output_refuses_foreign_folders(tmp_path):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(DataError, match="not an hfcf model folder.*--force"):
        artifacts.check_output(foreign)
    artifacts.check_output(foreign, force=True)
    artifacts.check_output(tmp_path / "new")  # a folder that does not exist yet is fine


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_weights_load_identically_or_raise(synthetic_model, tmp_path_factory, data):
    """Flip, cut, overwrite or insert bytes of a valid file: a load gives the original values or ArtifactError.

    With `rehash` the attacker also fixes config.json's sha256, so only the structural checks stand in the
    way: then a load may succeed with other values, but never with a wrong shape, dtype or a non-finite value,
    and never fails with anything but ArtifactError.
    """
    out = synthetic_model[0]
    folder = tmp_path_factory.mktemp("mutant") / "model"
    shutil.copytree(out, folder)
    blob = bytearray((folder / "dot.safetensors").read_bytes())
    kind = data.draw(st.sampled_from(["flip", "truncate", "overwrite", "insert"]))
    position = data.draw(st.integers(0, len(blob) - 1))
    if kind == "flip":
        blob[position] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "truncate":
        del blob[position:]
    elif kind == "overwrite":
        chunk = data.draw(st.binary(min_size=1, max_size=16))
        blob[position:position + len(chunk)] = chunk
    else:
        blob[position:position] = data.draw(st.binary(min_size=1, max_size=16))
    (folder / "dot.safetensors").write_bytes(bytes(blob))
    rehashed = data.draw(st.booleans())
    if rehashed:
        rehash(folder)
    try:
        loaded = artifacts.load(folder)
    except ArtifactError:
        return
    reference = artifacts.load(out).weights["dot"]
    for key, array in loaded.weights["dot"].items():
        assert array.shape == reference[key].shape and array.dtype == reference[key].dtype, key
        assert np.isfinite(array).all(), key
        if not rehashed:
            np.testing.assert_array_equal(array, reference[key], err_msg=key)


def test_recommender_answers_only_after_a_strict_load(folder):
    rewrite_weights(folder, lambda s: s["item_bias.weight"].__setitem__((2, 0), float("inf")))
    with pytest.raises(ArtifactError, match="NaN or infinite"):
        Recommender.from_pretrained(folder)
    with pytest.raises(ArtifactError):  # the folder is refused whole, even for the intact model
        Recommender.from_pretrained(folder, model="nn")


@pytest.mark.parametrize("batchnorm, lazy, note", [(True, False, ""), (True, True, " (L2 on the embeddings only)"),
                                                   (False, False, " without BatchNorm (L2 on the embeddings only)")])
def test_the_card_says_where_the_nn_l2_falls(batchnorm, lazy, note):
    from hfcf import card

    settings = {"user_size": 32, "item_size": 32, "embed_p": 0.0, "layers": [128], "batchnorm": batchnorm,
                "lazy": lazy, "epochs": 5, "lr": 0.003, "wd": 0.1, "sqr_mom": 0.99, "bs": 8192}
    line = card.settings_text("nn", settings)
    assert f"layers [128]{note}, " in line


def test_a_folder_in_an_older_hfcfs_shape_still_loads_and_serves(folder):
    """Format version 1 as hfcf first wrote it: no `batchnorm` in the nn's entry (it had BatchNorm), no record of
    the settings in the weights' metadata, no vocab hash."""
    for kind in ("dot", "nn", "topn"):
        edit_settings(folder, lambda entry: entry.pop("batchnorm", None), kind)
    edit_json(folder / "config.json", lambda c: c.pop("vocab_sha256"))
    loaded = artifacts.load(folder)
    assert "batchnorm" not in loaded.config["models"]["nn"] and "hidden.0.norm.weight" in loaded.weights["nn"]
    for kind in loaded.weights:
        rec = Recommender(loaded, kind)
        assert len(rec.recommend(rec.users.ids()[0], 5)) == 5
