"""Data without ratings (plays, purchases: who chose what): the top-N model trains on it alone, every choice
weighing 1, and the folder loads with Recommender and serves in the app without rating models."""
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hfcf import Recommender, data, space
from hfcf.errors import DataError, MissingColumnError

ROOT = Path(__file__).resolve().parents[1]


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def plays(tmp_path_factory, synthetic_dataset):
    """The synthetic set's choices as a file of only user and item ids (its clusters shape who chose what), and
    {item id as text: cluster}."""
    folder = tmp_path_factory.mktemp("plays")
    ratings = synthetic_dataset.ratings
    ratings[["user", "item"]].to_csv(folder / "plays.csv", index=False)
    clusters = {str(item): synthetic_dataset.truth["item_cluster"][str(title)]
                for item, title in zip(ratings["item"], ratings["title"])}
    return folder / "plays.csv", clusters


@pytest.fixture(scope="module")
def plays_model(plays):
    """The model train.py writes for the plays file with no flags but the output folder, and its log."""
    pytest.importorskip("fastai")
    import train
    from contextlib import redirect_stdout
    from io import StringIO

    out = plays[0].parent / "model"
    log = StringIO()
    with redirect_stdout(log):
        assert train.main(["--data", str(plays[0]), "--out", str(out)]) == 0
    return out, log.getvalue()


def test_a_file_of_users_and_items_trains_the_top_n_model_alone(plays_model):
    out, log = plays_model
    assert "plays.csv has no ratings: training the top-N model only" in log
    assert sorted(path.name for path in out.glob("*.safetensors")) == ["topn.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert list(config["models"]) == ["topn"] and config["y_range"] == [0.0, 1.0]
    assert config["dataset"]["implicit"] is True and config["dataset"]["rating_range"] == [1.0, 1.0]
    assert config["dataset"]["read_as"]["columns"]["rating_col"] == "none"  # beside the detected reading options
    assert config["metrics"] == {}  # every rating is 1: no rating error to report
    assert config["ranking"]["topn"]["precision@10"] > config["ranking"]["popularity"]["precision@10"]
    card = (out / "README.md").read_text()
    assert "Implicit data: no ratings, only who chose what, so every choice weighs 1" in card
    assert "- implicit-feedback" in card and "| model | RMSE |" not in card
    assert "| topn | " in card.split("## Held-out accuracy")[1]  # the top-10 quality, without rating error
    assert "rec.fold_in([" in card and 'model="dot"' not in card


def test_the_cards_example_runs_on_the_implicit_folder(plays_model):
    import re

    card = (plays_model[0] / "README.md").read_text()
    code = re.findall(r"```python\n(.*?)```", card, flags=re.S)[0].replace('"you/name"', repr(str(plays_model[0])))
    namespace = {}
    exec(compile(code, "README.md of the model", "exec"), namespace)
    assert namespace["rec"].implicit


def test_rating_col_none_reads_a_ratings_file_as_choices(tmp_path):
    path = tmp_path / "stars.csv"
    path.write_text("user,item,stars\n1,10,5\n1,11,2\n2,10,4\n2,12,1\n")
    with pytest.raises(MissingColumnError, match="pass --rating-col stars"):
        data.load(path)  # another column might hold the ratings: it is not taken for choices
    dataset = data.load(path, rating_col="none")
    assert dataset.implicit and dataset.ratings["rating"].tolist() == [1.0] * 4
    assert dataset.read_as["columns"]["rating_col"] == "none" and "implicit data" in dataset.notes[0]
    (tmp_path / "titled.csv").write_text("user,item,title\n1,10,A\n1,11,B\n2,10,A\n2,12,C\n")
    titled = data.load(tmp_path / "titled.csv")  # user, item and title: still who chose what
    assert titled.implicit and titled.ratings["title"].astype(str).tolist() == ["A", "B", "A", "C"]


def test_a_play_log_with_a_time_column_reads_as_choices(tmp_path):
    """user,item,timestamp is the usual play log: implicit, not "pass --rating-col timestamp"."""
    path = tmp_path / "log.csv"
    path.write_text("user,item,timestamp\n" + "".join(f"{u},{i},{1600000000 + u * 10 + i}\n"
                                                      for u in range(1, 5) for i in range(1, 4)))
    dataset = data.load(path)
    assert dataset.implicit and len(dataset.ratings) == 12


def test_a_headerless_file_of_text_ids_is_told_about_no_header_and_keeps_every_row(tmp_path):
    """With no column of numbers nothing tells a header from data: the refusal offers --no-header, which keeps row 1."""
    path = tmp_path / "plays.tsv"
    rows = [(user, book) for user in ("alice", "bob", "carol", "dan") for book in ("b1", "b2", "b3") if user != book]
    path.write_text("".join(f"{user}\t{book}\n" for user, book in rows))
    with pytest.raises(MissingColumnError, match="pass --no-header"):
        data.load(path)
    dataset = data.load(path, header=False)
    assert dataset.implicit and len(dataset.ratings) == len(rows)


def test_rating_models_and_a_y_range_are_refused_with_advice_that_works(plays, tmp_path, capsys):
    pytest.importorskip("fastai")
    import train

    out = str(tmp_path / "model")
    assert train.main(["--data", str(plays[0]), "--out", out, "--models", "dot,topn"]) == 2
    error = capsys.readouterr().err
    assert "dot predicts ratings, and plays.csv has none" in error and "pass --models topn" in error
    assert train.main(["--data", str(plays[0]), "--out", out, "--y-range", "0,5"]) == 2
    assert "leave out --y-range" in capsys.readouterr().err
    assert not Path(out).exists()
    assert train.main(["--data", str(plays[0]), "--out", out, "--models", "topn", "--epochs", "1"]) == 0


def test_recommender_loads_the_folder_and_answers_without_ratings(plays_model, plays):
    rec = Recommender.from_pretrained(str(plays_model[0]))
    assert rec.model == "topn" and rec.implicit and rec.rating_model is None
    with pytest.raises(DataError, match="trained on data without ratings.*pass model='topn'"):
        Recommender.from_pretrained(str(plays_model[0]), model="dot")
    with pytest.raises(DataError, match="rank titles with recommend"):
        rec.predict(1, [rec.items.keys[1]])
    rec.attach_history(data.load(plays[0]))
    chosen = pd.read_csv(plays[0]).query("user == 1")["item"].astype(str)
    history = rec.history(1)
    assert list(history.columns) == ["title"] and set(history["title"]) == set(chosen)
    top = rec.recommend(1, 10)
    assert list(top.columns) == ["title", "score", "ratings", "because"] and not set(top["title"]) & set(chosen)
    clusters = plays[1]
    own = clusters[chosen.iloc[0]]
    picks = rec.fold_in([title for title in clusters if clusters[title] == own][:5], 10).recommendations
    assert np.mean([clusters[title] == own for title in picks["title"]]) > 0.5  # chance is a quarter
    with pytest.raises(DataError, match="give a list of the titles chosen"):
        rec.fold_in({chosen.iloc[0]: 5})


@pytest.fixture(scope="module")
def plays_app(plays_model, plays):
    sys.path.insert(0, str(ROOT))
    import app

    recommenders = space.load_recommenders(str(plays_model[0]))
    assert list(recommenders) == ["topn"]
    assert space.load_history(recommenders, str(plays[0]), log=quiet) == ""  # re-read as choices, fingerprint kept
    return recommenders, app.build_demo(recommenders)


def frame(output):
    return pd.DataFrame(output["data"], columns=output["headers"])


def test_the_app_serves_the_folder_with_no_rating_columns_or_tabs(plays_app, plays):
    recommenders, demo = plays_app
    summary, top, history, plot = demo("1", "topn", 5, api_name="rate_user")
    chosen = set(pd.read_csv(plays[0]).query("user == 1")["item"].astype(str))
    assert f"User **1** chose **{len(chosen)}** titles" in summary and plot is None
    assert frame(history).columns.tolist() == ["title"] and set(frame(history)["title"]) == chosen
    assert "predicted" not in frame(top).columns and not set(frame(top)["title"]) & chosen
    title = next(iter(chosen))
    added = demo({"headers": ["title", "rating"], "data": [], "metadata": None}, title, 1, api_name="add_rating")
    summary, picks = demo(added, "topn", 5, api_name="newcomer")
    assert len(frame(picks)) == 5 and title not in set(frame(picks)["title"])
    import gradio as gr

    rated = {"headers": ["title", "rating"], "data": [[title, 5]], "metadata": None}  # what a script could send
    with pytest.raises(gr.Error, match="each counting 1: give a list of the titles chosen"):
        demo(rated, "topn", 5, api_name="newcomer")
    names = {fn.api_name for fn in demo.fns.values()}
    assert "biases" not in names and "rate_user" in names
    config = demo.get_config_file()
    components = {c["id"]: c for c in config["components"]}
    sliders = [c["props"].get("label") for c in components.values() if c["type"] == "slider"]
    assert "Your rating" not in sliders  # nothing to rate on: a choice counts 1
    plots = [c for c in components.values() if c["type"] == "plot"]
    assert plots and not any(c["props"].get("visible", True) for c in plots if c["props"].get("label") ==
                             "Actual vs predicted")
    text, metrics, _ = space.model_info(recommenders)
    assert metrics.empty and "the data has no ratings, only who chose what" in text


def test_a_client_session_with_the_implicit_folder(serve_app, plays_app):
    from gradio_client import Client

    recommenders, _ = plays_app
    client = Client(serve_app(recommenders), verbose=False, analytics_enabled=False, download_files=False)
    _, top, history, _ = client.predict("3", "topn", 4, api_name="/rate_user")
    assert frame(top)["title"].tolist() == recommenders["topn"].recommend(3, 4)["title"].tolist()
    assert frame(history)["title"].tolist() == sorted(recommenders["topn"].history(3)["title"])


def test_a_frame_of_ids_as_the_user_has_it_gives_the_same_histories(plays_model, plays):
    rec = Recommender.from_pretrained(str(plays_model[0]))
    expected = rec.attach_history(data.load(plays[0])).history(5)
    frame = pd.read_csv(plays[0])  # user and item only: no rating column is needed where the data had none
    assert rec.attach_history(frame).history(5).equals(expected)
    assert rec.attach_history(frame.astype(str).assign(rating=3)).history(5).equals(expected)


@pytest.mark.browser
def test_a_browser_visit_shows_choices_and_no_rating_inputs(serve_app, plays_app):
    from test_browser import CHROMIUM, CHROMIUM_ARGS, grid_rows, pick_title, wait_for_grid

    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    recommenders, _ = plays_app
    topn = recommenders["topn"]
    user = topn.users.ids()[0]  # the user the page opens on
    chosen = sorted(topn.history(user)["title"])
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1366, "height": 900})
        page.goto(serve_app(recommenders))
        wait_for_grid(page, "What they chose", chosen[:5])
        page.get_by_text(f"chose {len(chosen)} titles").wait_for()
        assert page.locator(".js-plotly-plot").count() == 0
        page.get_by_role("tab", name="New here? Pick a few titles").click()
        title = topn.search_titles("", 1)[0]  # among the box's first suggestions: no wait on a search
        box = page.get_by_role("combobox", name="A title you chose")
        for _ in range(3):  # a late answer to an earlier keystroke can replace the pick on a loaded machine
            pick_title(page, "A title you chose", title, title)
            if box.input_value() == title:
                break
        expect(box).to_have_value(title)
        assert page.get_by_label("number input for Your rating").count() == 0
        page.get_by_role("button", name="Add it").click()
        wait_for_grid(page, "Your ratings (edit them here too)", [title])
        page.get_by_role("button", name="Recommend for me").click()
        expected = topn.fold_in([title], 10).recommendations
        wait_for_grid(page, "Your top picks", expected["title"].tolist())
        assert title not in [row[0] for row in grid_rows(page, "Your top picks")]
        browser.close()
