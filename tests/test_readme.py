"""The README's Python examples run as written, against a MovieLens 100k model trained here (issue 13).

Only what cannot exist offline is swapped: the Hub repo id becomes the local model folder, and the app's address
becomes the app this test serves. The shell blocks are not run here (they train, serve and install).
"""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def python_blocks():
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def block_with(text):
    found = [block for block in python_blocks() if text in block]
    assert len(found) == 1, f"one README Python block should hold {text!r}"
    return found[0]


def test_every_python_block_is_run_below():
    assert len(python_blocks()) == 2


@pytest.mark.integration
def test_the_recommender_example_runs(ml100k_model):
    code = block_with("Recommender.from_pretrained").replace('"you/movielens-cf"', repr(str(ml100k_model[0])))
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    rec = namespace["rec"]
    assert rec.model == "topn" and len(rec.history(196)) > 0
    assert "because" in rec.recommend(196, n=3).columns  # after attach_history, as the comment says


@pytest.mark.integration
def test_the_gradio_client_example_runs(serve_app, ml100k_model, capsys):
    from hfcf import space

    recommenders = space.load_recommenders(str(ml100k_model[0]))
    for recommender in recommenders.values():
        recommender.attach_history(ml100k_model[3].ratings)
    url = serve_app(recommenders)
    code = block_with("gradio_client").replace('"http://127.0.0.1:7860/"', repr(url))
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "because" in printed and "user '9999' is not in this model; valid user ids are 1 to 943" in printed


def test_a_model_cards_example_runs_on_that_models_own_data(csv_model):
    """The card's snippet names a user and titles of the model's own data, not MovieLens's."""
    card = (csv_model / "model" / "README.md").read_text()
    code = re.findall(r"```python\n(.*?)```", card, flags=re.S)[0].replace('"you/name"', repr(str(csv_model / "model")))
    namespace = {}
    exec(compile(code, "README.md of the model", "exec"), namespace)
    assert namespace["rec"].model == "topn"
