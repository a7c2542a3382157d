"""Defects a hostile review found, one test each (the Hub's in test_hub.py, the app's in test_app.py): nothing of
the user's is deleted, interrupted writes are recovered, tampered files are refused cheaply, advice is advice that
works."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import train
from hfcf import Recommender, artifacts
from hfcf.errors import ArtifactError

training = pytest.importorskip("hfcf.training")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def cloned_repo(synthetic_model, tmp_path):
    """A model folder that is also a git clone of a Hub repo, with the user's own notes in it."""
    out = shutil.copytree(synthetic_model[0], tmp_path / "model")
    (out / ".git").mkdir()
    (out / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (out / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    (out / "my_notes.md").write_text("what I tried\n")
    return out


def theirs(folder):
    return {path: (folder / path).read_text() for path in (".git/HEAD", ".gitattributes", "my_notes.md")}


def test_retraining_into_a_model_folder_keeps_what_hfcf_did_not_write(cloned_repo, capsys):
    """--out at a cloned Hub repo deleted .git, .gitattributes and the user's notes."""
    before = theirs(cloned_repo)
    old_weights = (cloned_repo / "dot.safetensors").read_bytes()
    assert train.main(["--data", "synthetic", "--epochs", "1", "--models", "dot", "--out", str(cloned_repo)]) == 0
    assert theirs(cloned_repo) == before
    assert (cloned_repo / "dot.safetensors").read_bytes() != old_weights
    assert not (cloned_repo / "nn.safetensors").exists()  # hfcf's own old files go: they would contradict config
    assert sorted(artifacts.load(cloned_repo).weights) == ["dot"]
    assert [p.name for p in cloned_repo.parent.iterdir()] == ["model"]  # no leftovers beside it


def test_force_writes_into_a_foreign_folder_and_keeps_its_files(tmp_path, capsys):
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    assert train.main(["--data", "synthetic", "--epochs", "1", "--models", "dot", "--out", str(folder)]) == 2
    assert "--force to write the model files into it (its other files are kept)" in capsys.readouterr().err
    assert train.main(["--data", "synthetic", "--epochs", "1", "--models", "dot", "--out", str(folder),
                       "--force"]) == 0
    assert (folder / "thesis.tex").read_text() == "years of work" and artifacts.load(folder)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"mine": true}')
    assert train.main(["--data", "synthetic", "--models", "dot", "--out", str(tmp_path / "other"), "--force"]) == 2
    assert "holds config.json, which writing a model would overwrite" in capsys.readouterr().err
    assert json.loads((tmp_path / "other" / "config.json").read_text()) == {"mine": True}


KILL_AT_RENAME = textwrap.dedent("""
    import os, sys
    from hfcf import artifacts
    folder = artifacts.load(sys.argv[1])
    real, calls = os.replace, []
    def replace(src, dst):
        calls.append(src)
        if len(calls) == int(sys.argv[2]):
            os._exit(137)  # as kill -9: no cleanup, no finally
        real(src, dst)
    artifacts.os.replace = replace
    weights = folder.weights
    artifacts.save(sys.argv[1], folder.config, folder.users, folder.items, folder.item_counts, weights, "card")
""")


@pytest.mark.parametrize("killed_at", [1, 3, 7])  # before the new files are complete; mid-way; before config.json
def test_a_write_killed_mid_way_is_recovered_by_the_next_load(cloned_repo, killed_at):
    """kill -9 during a write: the next load finds a whole model, the new one once its files were all written."""
    before, old_card = theirs(cloned_repo), (cloned_repo / "README.md").read_text()
    done = subprocess.run([sys.executable, "-c", KILL_AT_RENAME, str(cloned_repo), str(killed_at)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 137, done.stderr
    assert any(name.startswith(".hfcf-") for name in os.listdir(cloned_repo))
    rec = Recommender.from_pretrained(cloned_repo)  # finds the leftovers and recovers
    assert rec.recommend(rec.users.ids()[0], 3).shape[0] == 3
    assert (cloned_repo / "README.md").read_text() == ("card" if killed_at > 1 else old_card)
    assert theirs(cloned_repo) == before
    assert os.listdir(cloned_repo.parent) == ["model"]
    assert not any(name.startswith(".hfcf-") for name in os.listdir(cloned_repo))


def test_train_py_recovers_leftovers_before_writing(cloned_repo):
    subprocess.run([sys.executable, "-c", KILL_AT_RENAME, str(cloned_repo), "2"], cwd=ROOT, timeout=120)
    assert artifacts.leftovers(cloned_repo)[0], "a complete new model waits to be put in place"
    assert train.main(["--data", "synthetic", "--epochs", "1", "--models", "dot", "--out", str(cloned_repo)]) == 0
    assert (cloned_repo / "my_notes.md").read_text() == "what I tried\n"
    assert os.listdir(cloned_repo.parent) == ["model"] and artifacts.leftovers(cloned_repo) == ([], [])


def test_a_last_batch_of_one_row_is_joined_to_the_one_before():
    """201 rows in batches of 32 ended with a one-row batch that BatchNorm cannot train on."""
    x, y = torch_rows(201)
    sizes = [len(batch_y) for _, batch_y in training.TensorBatches(x, y, 32, shuffle=True)]
    assert min(sizes) > 1 and sum(sizes) == 201 and len(sizes) == len(training.TensorBatches(x, y, 32, True))
    assert [len(b) for _, b in training.TensorBatches(x, y, 200, shuffle=True)] == [201]
    assert [len(b) for _, b in training.TensorBatches(x, y, 100, shuffle=False)] == [100, 100, 1]  # scoring is fine


def torch_rows(n):
    import torch
    return torch.zeros((n, 2), dtype=torch.long), torch.zeros(n)


def test_train_py_on_201_ratings_with_batches_of_32_trains_the_nn(tmp_path, capsys):
    rng = np.random.default_rng(0)
    rows = ["user,item,rating"] + [f"{u},{i},{rng.integers(1, 6)}" for u, i in
                                   sorted({(int(u), int(i)) for u, i in rng.integers(1, 40, (400, 2))})[:251]]
    (tmp_path / "ratings.csv").write_text("\n".join(rows) + "\n")
    code = train.main(["--data", str(tmp_path / "ratings.csv"), "--models", "nn", "--bs", "32", "--epochs", "2",
                       "--out", str(tmp_path / "model")])
    assert code == 0, capsys.readouterr().err
    code = train.main(["--data", "synthetic", "--models", "nn", "--bs", "1", "--set", "nn.batchnorm=true",
                       "--out", str(tmp_path / "other")])
    assert code == 2 and "--bs must be at least 2" in capsys.readouterr().err


def test_a_split_that_holds_out_nothing_is_refused(tmp_path, capsys):
    """--valid-pct 0.9999 said "scored on 0" and then crashed."""
    code = train.main(["--data", "synthetic", "--valid-pct", "0.9999", "--out", str(tmp_path / "model")])
    err = capsys.readouterr().err
    assert code == 2 and "held out no rating" in err and "0 to train on everything" in err
    assert not (tmp_path / "model").exists()


def test_a_tampered_config_is_refused_before_anything_large_is_allocated(synthetic_model, tmp_path):
    """N_factors 2,000,000 in config.json cost 11 s and 2.8 GB before the refusal."""
    folder = shutil.copytree(synthetic_model[0], tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    config["models"]["dot"]["n_factors"] = 2_000_000
    (folder / "config.json").write_text(json.dumps(config))
    started = time.perf_counter()
    with pytest.raises(ArtifactError, match="the dot entry of config.json .* is not the one dot.safetensors was"):
        artifacts.load(folder)
    assert time.perf_counter() - started < 2
    del config["models"]["dot"]["sha256"]  # even without the weights' record of it, shapes come from the header
    config["models"]["dot"]["sha256"] = artifacts.sha256(folder / "dot.safetensors")
    header_only = artifacts._read_header("dot.safetensors", (folder / "dot.safetensors").read_bytes())
    assert header_only["item_factors.weight"]["shape"][1] != 2_000_000


def test_swapped_titles_in_vocab_json_are_refused(synthetic_model, tmp_path):
    """Two titles swapped in vocab.json loaded silently, every answer mislabelled."""
    folder = shutil.copytree(synthetic_model[0], tmp_path / "model")
    vocab = json.loads((folder / "vocab.json").read_text())
    vocab["items"][1], vocab["items"][2] = vocab["items"][2], vocab["items"][1]
    (folder / "vocab.json").write_text(json.dumps(vocab) + "\n")
    with pytest.raises(ArtifactError, match="vocab.json does not match the sha256 in config.json"):
        artifacts.load(folder)


def test_y_range_advice_is_a_flag_value_that_works(tmp_path, capsys):
    """The advice said `--y-range 0 7`, which argparse refuses; the flag takes low,high."""
    from hfcf import data

    (tmp_path / "r.csv").write_text("user,item,rating\n1,1,7\n2,2,1\n1,2,4\n2,1,3\n")
    assert train.main(["--data", str(tmp_path / "r.csv"), "--out", str(tmp_path / "m")]) == 2
    messages = [capsys.readouterr().err]
    for y_range in [(2, 1), ("a", 5)]:
        with pytest.raises(data.DataError) as caught:
            data.load("synthetic", y_range=y_range)
        messages.append(str(caught.value))
    for message in messages:
        advice = message.split("--y-range ", 1)[1].split()[0]
        low, high = train.parser().parse_args(["--y-range", advice]).y_range  # the advice parses
        assert low < high, message
    assert train.main(["--data", str(tmp_path / "r.csv"), "--y-range", messages[0].split("--y-range ")[1].split()[0],
                       "--epochs", "1", "--models", "dot", "--out", str(tmp_path / "m")]) == 0  # and works


@pytest.mark.parametrize("where, message", [("", "no model given"), ("model-typo", "there is no folder"),
                                            ("models/typo", "there is no folder")])
def test_a_local_mistake_is_not_sent_to_the_hub(where, message, tmp_path, monkeypatch):
    """"" loaded the current folder; a mistyped local name was taken for a Hub repo id."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    with pytest.raises(ArtifactError, match=message):
        Recommender.from_pretrained(where)


def test_a_reader_never_removes_a_folder_being_written(synthetic_model, tmp_path):
    """Loading while another process writes into the folder must not recover (and delete) its work."""
    out = shutil.copytree(synthetic_model[0], tmp_path / "model")
    building = out / ".hfcf-building-xyz"
    building.mkdir()
    (building / "config.json").write_text("{}")
    with artifacts._writing(out, wait=True):  # as save() holds it while it builds and renames
        subprocess.run([sys.executable, "-c", f"from hfcf import Recommender; Recommender.from_pretrained({str(out)!r})"],
                       cwd=ROOT, check=True, timeout=120)
        assert building.is_dir()
    assert artifacts.recover(out) and not building.exists()  # with the writer gone, the leftover goes


def test_save_refuses_a_file_where_the_folder_should_be(synthetic_model, tmp_path):
    target = tmp_path / "model"
    target.write_text("a file")
    folder = artifacts.load(synthetic_model[0])
    with pytest.raises(Exception, match="is a file, not a folder"):
        artifacts.save(target, folder.config, folder.users, folder.items, folder.item_counts,
                       folder.weights, "card")
    assert target.read_text() == "a file"
