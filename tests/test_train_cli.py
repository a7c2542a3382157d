"""train.py: bad input exits 2 with a message naming the problem and the fix, and writes nothing."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import train
from hfcf import artifacts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(path, text):
    path.write_text(text)
    return str(path)


def run(tmp_path, capsys, *args):
    out = tmp_path / "model"
    code = train.main([*args, "--out", str(out)])
    return code, capsys.readouterr().err, out


HEADER = "user,item,rating\n"
CASES = {
    "missing file": (lambda d: str(d / "nope.csv"), "nope.csv"),
    "empty file": (lambda d: write(d / "r.csv", ""), "empty"),
    "header only": (lambda d: write(d / "r.csv", HEADER), "holds only a header"),
    "missing column": (lambda d: write(d / "r.csv", "user,item,score\n1,2,3\n"),
                       "columns found: user, item, score"),
    "non-numeric rating": (lambda d: write(d / "r.csv", HEADER + "1,2,3\n1,3,good\n2,2,4\n"), "rating"),
    "NaN rating": (lambda d: write(d / "r.csv", HEADER + "1,2,3\n1,3,\n2,2,4\n"), "rating"),
    "infinite rating": (lambda d: write(d / "r.csv", HEADER + "1,2,3\n1,3,inf\n2,2,4\n"), "rating"),
    "rating outside y-range": (lambda d: write(d / "r.csv", HEADER + "1,2,3\n1,3,7\n2,2,4\n"), "--y-range"),
    "empty id": (lambda d: write(d / "r.csv", HEADER + "1,2,3\n,3,4\n2,2,4\n"), "user"),
    "duplicate pairs": (lambda d: write(d / "r.csv", HEADER + "1,2,3\n1,2,4\n2,3,4\n"), "--on-duplicate"),
    "one user": (lambda d: write(d / "r.csv", HEADER + "1,2,3\n1,3,4\n"), "1 distinct user"),
    "one item": (lambda d: write(d / "r.csv", HEADER + "1,2,3\n2,2,4\n"), "1 distinct item"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_ratings_exit_2_and_write_nothing(case, tmp_path, capsys):
    make, expected = CASES[case]
    code, err, out = run(tmp_path, capsys, "--data", make(tmp_path))
    assert code == 2, err
    assert err.startswith("error: ") and expected in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("args, expected", [
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--models", "dot,svd"], "--models takes one or more of dot,nn,topn"),
    (["--y-range", "5,1"], "--y-range needs low,high"),
    (["--valid-pct", "1.5"], "--valid-pct must be 0 (train on everything) or between 0 and 1"),
    (["--push"], "--push needs --repo-id"),
    (["--push", "--repo-id", "not a repo"], "--repo-id must look like owner/name"),
])
def test_bad_settings_exit_2_before_training(args, expected, tmp_path, capsys):
    code, err, out = run(tmp_path, capsys, "--data", "synthetic", *args)
    assert code == 2 and expected in err
    assert not out.exists()


def test_a_foreign_out_folder_is_refused_without_force(tmp_path, capsys):
    out = tmp_path / "model"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    code, err, _ = run(tmp_path, capsys, "--data", "synthetic")
    assert code == 2 and "not an hfcf model folder" in err and "--force" in err
    assert (out / "thesis.tex").read_text() == "years of work"


def test_an_unwritable_out_is_refused(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    code = train.main(["--data", "synthetic", "--out", str(blocker / "model")])
    assert code == 2 and "cannot write --out" in capsys.readouterr().err


def test_help_documents_every_setting(capsys):
    with pytest.raises(SystemExit) as done:
        train.main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for flag in ["--data", "--user-col", "--item-col", "--rating-col", "--out", "--models", "--epochs", "--factors",
                 "--layers", "--bs", "--lr", "--wd", "--y-range", "--seed", "--split", "--push", "--repo-id",
                 "--on-duplicate", "--force", "--fold", "--private", "--sep", "--header", "--no-header", "--columns",
                 "--missing", "matrix"]:
        assert flag in text, flag


def test_a_crash_mid_way_leaves_the_previous_model(synthetic_model, tmp_path, monkeypatch, capsys):
    from hfcf import pipeline

    out = tmp_path / "model"
    import shutil
    shutil.copytree(synthetic_model[0], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def crash(*args, **kwargs):
        raise RuntimeError("disk on fire")
    monkeypatch.setattr(pipeline, "evaluate_models", crash)
    with pytest.raises(RuntimeError):
        train.main(["--data", "synthetic", "--epochs", "1", "--out", str(out)])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_ctrl_c_during_training_exits_130_and_keeps_the_previous_model(synthetic_model, tmp_path):
    import shutil

    out = tmp_path / "model"
    shutil.copytree(synthetic_model[0], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    process = subprocess.Popen([sys.executable, "train.py", "--data", "synthetic", "--epochs", "400", "--bs", "64",
                                "--out", str(out)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # (a runner that starts jobs in the background has SIGINT ignored, and Python then never raises KeyboardInterrupt)
    lines = []
    for line in process.stdout:  # wait until training is under way
        lines.append(line)
        if "epoch 2" in line:
            break
    process.send_signal(signal.SIGINT)
    rest, _ = process.communicate(timeout=60)
    assert process.returncode == 130, "".join(lines) + rest
    assert "was left as it was" in rest
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_train_py_end_to_end_on_synthetic_data(tmp_path):
    out = tmp_path / "model"
    done = subprocess.run([sys.executable, "train.py", "--data", "synthetic", "--epochs", "2", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "dot epoch 2:" in done.stdout and "nn epoch 2:" in done.stdout  # plain lines, no progress bar
    assert "topn epoch 2:" in done.stdout and "precision@10" in done.stdout
    assert "\r" not in done.stdout + done.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["models"]["dot"]["epochs"] == 2
    assert sorted(artifacts.load(out).weights) == ["dot", "nn", "topn"]


def test_valid_pct_0_trains_on_every_rating_and_says_no_metrics_were_computed(tmp_path, synthetic_dataset):
    out = tmp_path / "model"
    done = subprocess.run([sys.executable, "train.py", "--data", "synthetic", "--epochs", "2", "--valid-pct", "0",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["split"]["n_train"] == len(synthetic_dataset.ratings) and config["split"]["n_valid"] == 0
    assert config["metrics"] == {} and config["ranking"] == {}
    assert all("metrics" not in settings for settings in config["models"].values())
    card = (out / "README.md").read_text()
    assert "nothing was held out, so this card reports no held-out metrics" in card
    assert "model-index" not in card and "| RMSE |" not in card
    fitting = [line for line in done.stdout.splitlines() if not line.startswith("choosing")]  # the inner slice's
    assert not any("valid_loss" in line for line in fitting)  # nothing to validate the refit on
    assert sorted(artifacts.load(out).weights) == ["dot", "nn", "topn"]


@pytest.mark.integration
def test_train_py_on_movielens_100k_writes_a_card_with_all_metrics(ml100k, tmp_path):
    out = tmp_path / "model"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "train.py", "--data", str(ml100k), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    card = (out / "README.md").read_text()
    config = json.loads((out / "config.json").read_text())
    for name in ("global mean", "user+item bias", "dot", "nn"):
        assert f"| {name} | {config['metrics'][name]['rmse']:.4f} |" in card
    assert config["metrics"]["dot"]["rmse"] < 0.93 and config["metrics"]["nn"]["rmse"] < 0.97
    assert config["metrics"]["dot"]["rmse"] < config["metrics"]["user+item bias"]["rmse"]
    assert "library_name: hfcf" in card and "model-index" in card and "Harper" in card
    ranking = config["ranking"]
    assert f"| topn | {ranking['topn']['precision@10']:.4f} |" in card
    assert ranking["topn"]["precision@10"] > 1.5 * ranking["popularity"]["precision@10"]
    print(f"train.py on MovieLens 100k: {time.perf_counter() - started:.1f} s")


def test_set_changes_one_models_setting_and_the_card_records_it(tmp_path):
    """--epochs, --bs, --lr and --wd apply to every model at once."""
    out = tmp_path / "model"
    done = subprocess.run([sys.executable, "train.py", "--data", "synthetic", "--epochs", "2", "--set", "nn.epochs=3",
                           "--set", "topn.n_factors=16", "--set", "nn.layers=20,10", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    models = json.loads((out / "config.json").read_text())["models"]
    assert (models["dot"]["epochs"], models["nn"]["epochs"], models["topn"]["epochs"]) == (2, 3, 2)
    assert models["topn"]["n_factors"] == 16 and models["nn"]["layers"] == [20, 10]
    card = (out / "README.md").read_text()
    assert "`fit_one_cycle(3, " in card and "16 factors" in card and "layers [20, 10]" in card


@pytest.mark.parametrize("value, message", [("svd.epochs=3", "MODEL one of dot, nn, topn"),
                                            ("nn.epoch=3", "SETTING one of epochs, lr")])
def test_set_refuses_a_model_or_setting_that_does_not_exist(tmp_path, capsys, value, message):
    with pytest.raises(SystemExit) as done:
        train.main(["--data", "synthetic", "--set", value, "--out", str(tmp_path / "model")])
    assert done.value.code == 2 and message in capsys.readouterr().err


def test_set_refuses_a_value_of_the_wrong_kind(tmp_path, capsys):
    assert train.main(["--data", "synthetic", "--set", "nn.epochs=three", "--out", str(tmp_path / "model")]) == 2
    assert "expected a value like the default, 0" in capsys.readouterr().err and not (tmp_path / "model").exists()


def test_the_card_claims_only_what_is_true_of_the_data(tmp_path):
    """A model trained on ratings.parquet said `tags: [movielens]` and `datasets: [ratings-parquet]`."""
    (tmp_path / "ratings.csv").write_text("user,item,rating\n" + "".join(
        f"{u},{i},{(u * i) % 5 + 1}\n" for u in range(1, 30) for i in range(1, 20) if (u + i) % 3))
    for extra, datasets in (([], None), (["--dataset-id", "someone/book-ratings"], ["someone/book-ratings"])):
        out = tmp_path / f"model{len(extra)}"
        assert train.main(["--data", str(tmp_path / "ratings.csv"), "--models", "dot", "--epochs", "1", *extra,
                           "--out", str(out)]) == 0
        front = (out / "README.md").read_text().split("---")[1]
        assert "movielens" not in front.lower()
        assert ("\ndatasets:\n- someone/book-ratings\n" in front) == bool(datasets)
        assert ("\ndatasets:" in front) == bool(datasets)  # never a file name where a Hub dataset id belongs


def test_set_takes_true_and_false_for_a_switch(tmp_path, capsys):
    args = train.parser().parse_args(["--set", "dot.lazy=false", "--set", "nn.lazy=yes"])
    chosen = train.model_settings(args, 5_000_000)
    assert (chosen["dot"].lazy, chosen["nn"].lazy) == (False, True)
    assert train.main(["--data", "synthetic", "--set", "dot.lazy=maybe", "--out", str(tmp_path / "model")]) == 2
    assert "expected a value like the default, True" in capsys.readouterr().err


# Refusals of files that read as something they are not: following the advice trains.

def dense_rows(user=str, item=str, rating=lambda u, i: (u * i) % 5 + 1, sep=","):
    """Rows of 30 users x 20 items (two in three pairs rated), ids and ratings made by the given functions."""
    return "".join(f"{user(u)}{sep}{item(i)}{sep}{rating(u, i)}\n" for u in range(1, 31) for i in range(1, 21)
                   if (u + i) % 3)


def train_ok(tmp_path, capsys, *args):
    """train.py with the smallest model on `args`; its folder loads."""
    code, err, out = run(tmp_path, capsys, *args, "--models", "dot", "--epochs", "1")
    assert code == 0, err
    return artifacts.load(out)


def test_ratings_outside_the_y_range_get_bounds_that_parse_and_train(tmp_path, capsys):
    import re

    rng = __import__("numpy").random.default_rng(0)
    path = write(tmp_path / "r.csv", "user,item,rating\n" + dense_rows(rating=lambda u, i: repr(rng.uniform(-10, 10))))
    code, err, _ = run(tmp_path, capsys, "--data", path, "--models", "dot", "--epochs", "1")
    assert code == 2 and "pass --y-range -10,10 or a wider range" in err, err
    suggested = re.search(r"--y-range (\S+)", err).group(1)
    loaded = train_ok(tmp_path, capsys, "--data", path, "--y-range", suggested)  # as typed
    assert loaded.config["y_range"] == [-10.0, 10.0]


@pytest.mark.parametrize("argv", [["--y-range", "-10.5,10.5"], ["--y-range=-10.5,10.5"]])
def test_a_negative_low_bound_parses_with_a_space_or_an_equals_sign(argv):
    assert train.parser().parse_args(train.negative_values_attached(argv)).y_range == (-10.5, 10.5)


def test_ids_past_64_bits_train_as_themselves(tmp_path, capsys):
    from hfcf.errors import UnknownUserError
    from hfcf.recommend import Recommender

    path = write(tmp_path / "r.csv", "user,item,rating\n" + dense_rows(user=lambda u: 10**19 + u))
    loaded = train_ok(tmp_path, capsys, "--data", path)
    assert len(loaded.users) == 31  # 30 users and #na#, where they once collapsed into one
    recommender = Recommender.from_pretrained(str(tmp_path / "model"))
    assert len(recommender.recommend(10**19 + 1, n=3)) == 3
    with pytest.raises(UnknownUserError, match="valid user ids include 10000000000000000001") as unknown:
        recommender.recommend(10**19 + 99)
    assert "-" not in str(unknown.value).split("include")[1]  # no id wrapped to a negative number


def test_a_title_na_trains_a_folder_that_loads(tmp_path, capsys):
    ratings = write(tmp_path / "r.csv", "user,item,rating\n" + dense_rows())
    titles = write(tmp_path / "t.csv", "item,title\n" + "".join(f"{i},{'#na#' if i == 3 else f'T{i}'}\n"
                                                                for i in range(1, 21)))
    loaded = train_ok(tmp_path, capsys, "--data", ratings, "--titles", titles)
    assert "#na# [item 3]" in loaded.items.keys


def test_a_user_na_is_refused_and_renaming_it_trains(tmp_path, capsys):
    text = "user,item,rating\n" + dense_rows(user=lambda u: "#na#" if u == 1 else f"u{u}")
    code, err, out = run(tmp_path, capsys, "--data", write(tmp_path / "r.csv", text))
    assert code == 2 and "rename that user in the file" in err and not out.exists()
    train_ok(tmp_path, capsys, "--data", write(tmp_path / "r.csv", text.replace("#na#", "u1")))


def test_a_folder_of_other_ratings_and_movies_csvs_trains_with_the_flags_given(tmp_path, capsys):
    import shlex

    write(tmp_path / "ratings.csv", "user_id,book_id,score\n" + dense_rows())
    write(tmp_path / "movies.csv", "book_id,book_title\n" + "".join(f"{i},Book {i}\n" for i in range(1, 21)))
    code, err, _ = run(tmp_path, capsys, "--data", str(tmp_path))
    assert code == 2 and "not MovieLens's" in err and "Traceback" not in err, err
    loaded = train_ok(tmp_path, capsys, *shlex.split(err.split("naming their columns: ")[1]))
    assert "Book 7" in loaded.items.keys


def test_a_movielens_ratings_file_given_alone_trains_when_its_folder_is_passed(tmp_path, capsys):
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    write(folder / "ratings.dat", dense_rows(sep="::").replace("\n", "::978300760\n"))
    write(folder / "movies.dat", "".join(f"{i}::Film {i} (1999)::Drama\n" for i in range(1, 21)))
    code, err, _ = run(tmp_path, capsys, "--data", str(folder / "ratings.dat"))
    assert code == 2 and f"pass the folder that holds it: --data {folder}" in err, err
    assert "Film 7 (1999)" in train_ok(tmp_path, capsys, "--data", str(folder)).items.keys


def test_a_csv_without_a_header_trains_with_its_first_row(tmp_path, capsys):
    rows = dense_rows()
    loaded = train_ok(tmp_path, capsys, "--data", write(tmp_path / "r.csv", rows))
    assert loaded.config["dataset"]["n_ratings"] == rows.count("\n")  # the first row is there
