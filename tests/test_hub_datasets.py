"""Ratings read from a Hub dataset repo (hf://datasets/OWNER/NAME[@REVISION]/PATH), against tests/hub_server.py:
train.py --data, the app's histories, the pinned commit in config.json, the card's `datasets:`, offline from the
cache, and every refusal's advice followed to success."""

import json

import pytest
from huggingface_hub import constants

from hfcf import data, hub, space
from hfcf.errors import DataError, HubError
from test_hub import TOKEN, hub_env, server, use_endpoint  # noqa: F401  (hub_env is autouse here too)

DATASET = "alice/bookclub"
STARS = "".join(f"{u},{b},{(u * b) % 5 + 1}\n" for u in range(1, 31) for b in range(1, 21) if (u + b) % 3)
BOOKS = "book,name\n" + "".join(f"{b},Book number {b}\n" for b in range(1, 21))
COLUMNS = ["--user-col", "reader", "--item-col", "book", "--rating-col", "stars"]


@pytest.fixture
def repo(server, monkeypatch):
    """The dataset repo on the test server (ratings in a folder, titles beside them); returns its head commit."""
    use_endpoint(monkeypatch, server.endpoint)
    return server.add_files(f"datasets/{DATASET}", {"data/stars.csv": b"reader,book,stars\n" + STARS.encode(),
                                                    "data/books.csv": BOOKS.encode()})


def url(path="data/stars.csv", revision=None):
    return f"hf://datasets/{DATASET}{'@' + revision if revision else ''}/{path}"


def go_offline(server, monkeypatch):
    server.close()  # from here on only the cache can answer
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def train_from_hub(tmp_path, *extra):
    import train

    out = tmp_path / "model"
    code = train.main(["--data", url(), *COLUMNS, "--titles", url("data/books.csv"), "--title-col", "name",
                       "--models", "dot", "--epochs", "1", "--valid-pct", "0", "--out", str(out), *extra])
    return code, out


def test_train_py_reads_a_dataset_file_pinned_to_its_commit_and_the_card_names_the_repo(repo, server, tmp_path):
    pytest.importorskip("fastai")
    code, out = train_from_hub(tmp_path)

    assert code == 0
    config = json.loads((out / "config.json").read_text())["dataset"]
    assert config["read_as"]["source"] == url(revision=repo)  # the commit, not "main", and no local path
    assert config["read_as"]["columns"]["titles_path"] == "books.csv"
    assert config["hub_id"] == DATASET
    front_matter = (out / "README.md").read_text().split("---")[1]
    assert f"datasets:\n- {DATASET}\n" in front_matter
    assert ("GET", f"/datasets/{DATASET}/resolve/{repo}/data/stars.csv") in server.requests


def test_dataset_id_given_outright_wins_over_the_repo(repo, tmp_path):
    pytest.importorskip("fastai")
    code, out = train_from_hub(tmp_path, "--dataset-id", "alice/the-original")
    assert code == 0 and json.loads((out / "config.json").read_text())["dataset"]["hub_id"] == "alice/the-original"


def test_a_revision_pins_the_file_as_it_was_then(repo, server):
    server.add_files(f"datasets/{DATASET}", {"data/stars.csv": b"reader,book,stars\n1,1,5\n"}, message="shrink")

    pinned = data.load(url(revision=repo), **dict(user_col="reader", item_col="book", rating_col="stars"))
    latest_path, latest = hub.dataset_file(url())

    assert len(pinned.ratings) == STARS.count("\n") and pinned.read_as["source"] == url(revision=repo)
    assert latest == url(revision=server.head(f"datasets/{DATASET}")) != url(revision=repo)
    assert latest_path.read_text() == "reader,book,stars\n1,1,5\n"


@pytest.fixture
def hub_model_folder(repo, tmp_path):
    pytest.importorskip("fastai")
    code, out = train_from_hub(tmp_path)
    assert code == 0
    return out


@pytest.fixture
def hub_model(hub_model_folder):
    return space.load_recommenders(str(hub_model_folder))


@pytest.mark.parametrize("how", ["--ratings", "HFCF_RATINGS"])
def test_app_py_reads_histories_from_the_url_as_ratings_or_from_hfcf_ratings(hub_model_folder, monkeypatch, how):
    import app

    shown = {}
    monkeypatch.setattr(app, "build_demo", lambda recommenders, note="": shown.update(recommenders=recommenders,
                                                                                         note=note))
    monkeypatch.setattr(app, "serve", lambda *args, **kwargs: None)
    monkeypatch.setenv("HFCF_RATINGS", url() if how == "HFCF_RATINGS" else "")

    assert app.main(["--model", str(hub_model_folder)] + (["--ratings", url()] if how == "--ratings" else [])) == 0
    assert shown["note"] == "" and len(shown["recommenders"]["dot"].history("7")) > 0


def test_the_app_shows_histories_read_from_the_dataset_repo(hub_model):
    assert space.load_history(hub_model, url(), log=lambda *_: None) == ""  # titles found beside, in the repo

    history = hub_model["dot"].history("7")
    expected = {f"Book number {b}": (7 * b) % 5 + 1 for b in range(1, 21) if (7 + b) % 3}
    assert dict(zip(history["title"], history["rating"])) == expected


def test_the_app_refuses_other_ratings_in_the_repo_by_their_fingerprint(hub_model, server):
    server.add_files(f"datasets/{DATASET}", {"data/stars.csv": b"reader,book,stars\n" + STARS.replace(",5\n", ",4\n")
                                             .encode()}, message="edit a rating")
    notes = []

    note = space.load_history(hub_model, url(), log=notes.append)

    assert "not the same ones" in note and hub_model["dot"]._history is None
    pinned = hub_model["dot"].config["dataset"]["read_as"]["source"]
    assert space.load_history(hub_model, pinned, log=notes.append) == ""  # the commit it was trained on


def test_the_app_serves_without_histories_when_the_hub_cannot_answer(hub_model, server, monkeypatch):
    go_offline(server, monkeypatch)
    notes = []

    note = space.load_history(hub_model, url("data/more-stars.csv"), log=notes.append)  # never downloaded

    assert f"{url('data/more-stars.csv')} is not in the local cache and offline mode is on" in note
    assert "predictions only" in note
    assert hub_model["dot"]._history is None and notes


def test_without_ratings_the_app_names_the_pinned_url_to_pass(hub_model, repo):
    note = space.load_history(hub_model, None, log=lambda *_: None)

    assert f"--ratings {url(revision=repo)}" in note
    assert space.load_history(hub_model, url(revision=repo), log=lambda *_: None) == ""  # that advice works


def test_train_py_and_the_app_work_offline_from_the_cache(repo, server, tmp_path, monkeypatch):
    pytest.importorskip("fastai")
    assert train_from_hub(tmp_path / "online")[0] == 0  # fills the cache
    go_offline(server, monkeypatch)
    seen = len(server.requests)

    code, out = train_from_hub(tmp_path)
    recommenders = space.load_recommenders(str(out))

    assert code == 0 and json.loads((out / "config.json").read_text())["dataset"]["read_as"]["source"] == \
        url(revision=repo)  # "main" resolved through the cache's refs/
    assert space.load_history(recommenders, url(), log=lambda *_: None) == ""
    assert recommenders["dot"].history("7")["title"].size > 0
    assert len(server.requests) == seen


def test_offline_with_nothing_cached_says_so_and_a_local_copy_works(repo, server, monkeypatch, tmp_path):
    go_offline(server, monkeypatch)
    with pytest.raises(HubError, match=url() + r" is not in the local cache and offline mode is on "
                                               r"\(HF_HUB_OFFLINE=1\): download it once online, or pass a local "
                                               r"copy of the file"):
        hub.dataset_file(url())

    copy = tmp_path / "stars.csv"
    copy.write_bytes(server.files(f"datasets/{DATASET}")["data/stars.csv"])
    assert len(data.load(str(copy), user_col="reader", item_col="book", rating_col="stars").ratings) > 0


@pytest.mark.parametrize("given, fixed", [
    (f"hf://{DATASET}/data/stars.csv", f"hf://datasets/{DATASET}/data/stars.csv"),  # a model repo
    (f"hf://datasets/{DATASET}", f"hf://datasets/{DATASET}/PATH"),  # no file
    (f"hf://datasets/{DATASET}/data/../../../etc/passwd", None),  # out of the repo's cache folder
    ("hf://", None),
])
def test_a_url_of_the_wrong_shape_is_refused_with_the_right_form(repo, given, fixed, capsys):
    import train

    assert train.main(["--data", given, "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "hf://datasets/OWNER/NAME[@REVISION]/PATH" in err
    if fixed:
        assert f"e.g. {fixed}" in err
        if "PATH" not in fixed:  # the example it gives reads
            assert len(data.load(fixed, user_col="reader", item_col="book", rating_col="stars").ratings) > 0


def test_a_file_not_in_the_repo_is_refused_naming_the_files_it_holds(repo, capsys, tmp_path):
    pytest.importorskip("fastai")
    import train

    assert train.main(["--data", url("stars.csv"), *COLUMNS]) == 2
    err = capsys.readouterr().err
    assert f"has no file 'stars.csv' at commit {repo}" in err
    suggested = err.strip().split("pass one it holds: ")[1].split(", ")
    assert suggested == [url("data/stars.csv"), url("data/books.csv")]  # the file of that name first
    assert train.main(["--data", suggested[0], *COLUMNS, "--models", "dot", "--epochs", "1", "--valid-pct", "0",
                       "--out", str(tmp_path / "model")]) == 0


def test_a_missing_repo_or_revision_is_named(repo):
    with pytest.raises(HubError, match=f"Repository datasets/alice/nothing-here not found at "):
        hub.dataset_file("hf://datasets/alice/nothing-here/stars.csv")
    with pytest.raises(HubError, match=f"Revision 'v9' not found in datasets/{DATASET}"):
        hub.dataset_file(url(revision="v9"))


def test_an_unreachable_hub_with_nothing_cached_fails_at_once(caplog):
    from test_hub import closed_port_endpoint

    endpoint = closed_port_endpoint()
    with pytest.raises(HubError, match=f"not in the local cache and the Hub could not be reached at {endpoint}"):
        hub.dataset_file(url(), endpoint=endpoint)
    assert "Retrying" not in caplog.text


def test_a_gated_repo_says_to_accept_its_conditions(repo, server):
    server.repos[f"datasets/{DATASET}"].gated = True
    with pytest.raises(HubError, match=f"datasets/{DATASET} is gated: accept its conditions"):
        hub.dataset_file(url())


def test_a_dataset_and_a_model_repo_of_the_same_name_are_kept_apart(repo, server):
    server.add_files(DATASET, {"data/stars.csv": b"a model repo's file"})
    assert hub.dataset_file(url())[0].read_bytes().startswith(b"reader,book,stars\n")


def test_a_private_dataset_repo_is_read_with_the_token_only(repo, server, monkeypatch):
    server.repos[f"datasets/{DATASET}"].private = True
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(HubError, match=f"datasets/{DATASET} not found .* a private repo also needs a token"):
        hub.dataset_file(url())

    monkeypatch.setenv("HF_TOKEN", TOKEN)  # the fix it names
    assert hub.dataset_file(url())[1] == url(revision=repo)


def test_a_parquet_file_stored_through_lfs_is_read(repo, server, tmp_path):
    import pandas as pd

    local = tmp_path / "stars.parquet"
    pd.read_csv(hub.dataset_file(url())[0]).to_parquet(local)
    server.add_files(f"datasets/{DATASET}", {"stars.parquet": local.read_bytes()}, message="add parquet")
    assert server.repos[f"datasets/{DATASET}"].files_at("main")[1]["stars.parquet"].lfs  # binary: the Hub's LFS

    dataset = data.load(url("stars.parquet"), user_col="reader", item_col="book", rating_col="stars")
    assert dataset.fingerprint == data.load(str(local), user_col="reader", item_col="book",
                                            rating_col="stars").fingerprint
