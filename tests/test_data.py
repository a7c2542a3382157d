"""hfcf.data: readers on tiny files in each real format, validation errors that name the fix, splits, synthetic data."""
import hashlib
import http.server
import io
import socket
import sys
import threading
import types
import zipfile

import numpy as np
import pandas as pd
import pytest

from hfcf import data
from hfcf.data import DataError


def write(folder, name, text, encoding="utf-8"):
    """Write `text` to folder/name and return the path."""
    path = folder / name
    path.write_bytes(text.encode(encoding))
    return path


def table(tmp_path, text, name="ratings.csv", **kwargs):
    """ratings_table on a file with MovieLens-style column names."""
    columns = {"user_col": "userId", "item_col": "movieId", "rating_col": "rating"} | kwargs
    return data.ratings_table(write(tmp_path, name, text), **columns)


def frame(rows, columns=("user", "item", "rating", "timestamp")):
    """A ratings DataFrame from row lists."""
    return pd.DataFrame(rows, columns=list(columns))


def fake_ml100k(folder):
    """A tiny MovieLens 100k folder: a latin-1 accent, a repeated title, an item missing from u.item."""
    folder.mkdir(exist_ok=True)
    write(folder, "u.data", "1\t10\t4\t881250949\n2\t10\t3\t881250950\n1\t20\t5\t881250951\n2\t30\t1\t881250952\n"
                            "3\t40\t2\t881250953\n")
    write(folder, "u.item", "10|Misérables, Les (1995)|01-Jan-1995||http://x|0\n"
                            "20|Chasing Amy (1997)|01-Jan-1997||http://x|0\n"
                            "30|Chasing Amy (1997) |01-Jan-1997||http://x|0\n", encoding="latin-1")
    return folder


# Validation: each bad input names the problem and the fix.

def test_empty_file_is_refused(tmp_path):
    with pytest.raises(DataError, match="ratings.csv is empty"):
        table(tmp_path, "")


def test_header_only_is_refused(tmp_path):
    with pytest.raises(DataError, match=r"ratings.csv has no ratings \(it is empty or holds only a header\)"):
        table(tmp_path, "userId,movieId,rating\n")


def test_missing_column_names_the_columns_found_and_the_option(tmp_path):
    with pytest.raises(DataError) as error:
        table(tmp_path, "userId,movieId,score\n1,2,3\n")
    assert "ratings.csv has no column 'rating' (columns found: userId, movieId, score); pass --rating-col score" \
        == str(error.value)


def test_missing_column_guesses_from_the_name(tmp_path):
    with pytest.raises(DataError, match="pass --item-col movie_id"):
        data.ratings_table(write(tmp_path, "r.csv", "user,movie_id,stamp,rating\n1,2,3,4\n"), "user", "item", "rating")


def test_validate_names_missing_columns():
    with pytest.raises(DataError, match=r"no column 'rating' \(columns found: user, item, stars\).*--rating-col"):
        data.validate(frame([[1, 2, 3]], ["user", "item", "stars"]))


@pytest.mark.parametrize("bad, shown", [("abc", "'abc'"), ("", "nan"), ("inf", "inf")])
def test_non_numeric_nan_or_infinite_ratings_are_refused(tmp_path, bad, shown):
    with pytest.raises(DataError) as error:
        table(tmp_path, f"userId,movieId,rating\n1,1,4\n2,2,{bad}\n3,3,{bad}\n")
    message = str(error.value)
    assert "2 ratings that are not finite numbers (data rows 2, 3" in message
    assert shown in message and "--rating-col" in message


def test_ratings_outside_y_range_suggest_a_range(tmp_path):
    with pytest.raises(DataError) as error:
        table(tmp_path, "userId,movieId,rating\n1,1,0.5\n2,2,5\n", y_range=(1, 5))
    assert "ratings from 0.5 to 5, outside y_range (1, 5); pass --y-range 0.5,5" in str(error.value)


@pytest.mark.parametrize("y_range", [(5, 1), ("a", 2), (0, float("inf"))])
def test_bad_y_range_is_refused(y_range):
    with pytest.raises(DataError, match="--y-range 0,5.5"):
        data.validate(frame([[1, 1, 3, 0], [2, 2, 4, 0]]), y_range=y_range)


def test_missing_user_id_is_refused(tmp_path):
    with pytest.raises(DataError) as error:
        table(tmp_path, "userId,movieId,rating\n1,1,4\n,2,3\n")
    assert "1 rows with no user id (data rows 2)" in str(error.value) and "--user-col" in str(error.value)


def test_blank_item_id_is_refused():
    with pytest.raises(DataError, match=r"1 rows with no item id \(data rows 1\).*--item-col"):
        data.validate(frame([["a", "  ", 3, 0], ["b", "x", 4, 0]]))


def test_duplicate_pairs_are_refused_by_default(tmp_path):
    with pytest.raises(DataError) as error:
        table(tmp_path, "userId,movieId,rating\n1,1,4\n1,1,3\n2,2,5\n2,2,1\n2,2,2\n3,3,3\n")
    message = str(error.value)
    assert "2 duplicate (user, item) pairs in 5 rows (first: user 1, item 1)" in message
    assert "--on-duplicate last" in message and "--on-duplicate mean" in message


def test_duplicates_last_keeps_the_latest_timestamp_in_file_order():
    ratings = frame([[1, 1, 4.0, 200], [2, 2, 1.0, 5], [1, 1, 2.0, 100], [3, 3, 5.0, 7], [2, 2, 3.0, 6]])
    clean, notes = data.validate(ratings, on_duplicate="last")
    assert clean[["user", "item", "rating"]].values.tolist() == [[1, 1, 4.0], [3, 3, 5.0], [2, 2, 3.0]]
    assert "merged 2 duplicate (user, item) pairs (4 rows) by keeping the latest rating" in notes


def test_duplicates_last_without_timestamps_keeps_the_later_row():
    ratings = frame([[1, 1, 4.0], [2, 2, 1.0], [1, 1, 2.0]], ["user", "item", "rating"])
    clean, _ = data.validate(ratings, on_duplicate="last")
    assert clean[["user", "item", "rating"]].values.tolist() == [[2, 2, 1.0], [1, 1, 2.0]]


def test_duplicates_mean_averages_in_place_of_the_first():
    ratings = frame([[1, 1, 4.0, 200], [2, 2, 1.0, 5], [1, 1, 2.0, 300], [1, 1, 3.0, 100]])
    clean, notes = data.validate(ratings, on_duplicate="mean")
    assert clean[["user", "item", "rating", "timestamp"]].values.tolist() == [[1, 1, 3.0, 300.0], [2, 2, 1.0, 5.0]]
    assert "merged 1 duplicate (user, item) pairs (3 rows) by mean" in notes


def test_unknown_duplicate_policy_is_refused():
    with pytest.raises(DataError, match="on_duplicate must be one of error, last, mean"):
        data.validate(frame([[1, 1, 3, 0]]), on_duplicate="first")


@pytest.mark.parametrize("rows, noun", [([[1, 1, 3, 0], [1, 2, 4, 0]], "user"), ([[1, 1, 3, 0], [2, 1, 4, 0]], "item")])
def test_a_single_user_or_item_is_refused(rows, noun):
    with pytest.raises(DataError, match=f"has 1 distinct {noun}; collaborative filtering needs at least 2"):
        data.validate(frame(rows))


def test_load_gives_float32_ratings_fingerprinted_as_read(tmp_path):
    """Ratings a float32 cannot hold exactly (3.7) keep the fingerprint they had when they stayed float64."""
    path = tmp_path / "ratings.csv"
    pd.DataFrame({"user": [1, 1, 2, 2], "item": [1, 2, 1, 2], "rating": [3.7, 4.1, 2.3, 5.0]}).to_csv(path, index=False)
    dataset = data.load(path)
    as_read, _ = data.validate(pd.read_csv(path))
    assert dataset.ratings["rating"].dtype == "float32" and as_read["rating"].dtype == "float64"
    assert dataset.fingerprint == data.fingerprint(as_read)


def test_validate_output_columns_and_types():
    clean, _ = data.validate(frame([["7", "b", "4", None], ["8", "a", 3, None]], ["user", "item", "rating", "x"]))
    assert list(clean.columns) == data.COLUMNS
    assert clean["user"].dtype == "int32" and clean["item"].tolist() == ["b", "a"]
    assert clean["rating"].dtype == "float64" and clean["timestamp"].isna().all()
    assert clean["title"].tolist() == ["b", "a"]


def test_dates_become_seconds_and_garbage_timestamps_are_refused(tmp_path):
    dataset = table(tmp_path, "userId,movieId,rating,when\n1,1,4,1970-01-02\n2,2,3,1970-01-01T00:01:00\n",
                    timestamp_col="when")
    assert dataset.ratings["timestamp"].tolist() == [86400.0, 60.0]
    with pytest.raises(DataError, match="timestamps that are neither numbers nor dates.*--timestamp-col"):
        table(tmp_path, "userId,movieId,rating,when\n1,1,4,soon\n2,2,3,later\n", timestamp_col="when")


# The duplicate-title rule.

def test_shared_titles_get_the_item_suffix_after_the_lowest_id():
    ratings = frame([[1, 9, 4, "X"], [1, 3, 4, "X"], [2, 5, 3, " X "], [2, 7, 3, None], [3, 8, 1, "Y"]],
                    ["user", "item", "rating", "title"])
    clean, notes = data.validate(ratings)
    assert clean["title"].tolist() == ["X [item 9]", "X", "X [item 5]", "7", "Y"]
    assert notes == ["1 items have no title; their ids stand in as titles",
                     "2 items share a title with a lower item id; they got the suffix ' [item <id>]'"]


def test_titles_are_unique_per_item_even_when_a_title_is_another_items_id():
    ratings = frame([[1, 1, 4, "2"], [2, 2, 4, None]], ["user", "item", "rating", "title"])
    assert data.validate(ratings)[0]["title"].tolist() == ["2", "2 [item 2]"]


# Readers on tiny files in their real formats.

def test_movielens_100k_reader(tmp_path):
    dataset = data.movielens_100k(fake_ml100k(tmp_path / "ml-100k"))
    assert dataset.ratings["title"].tolist() == ["Misérables, Les (1995)", "Misérables, Les (1995)",
                                                 "Chasing Amy (1997)", "Chasing Amy (1997) [item 30]", "40"]
    assert dataset.ratings["user"].dtype == "int32" and dataset.ratings["timestamp"].iloc[0] == 881250949.0
    assert dataset.name == "MovieLens 100k" and "no redistribution" in dataset.licence
    assert "Harper" in dataset.citation and "2827872" in dataset.citation and "100k" in dataset.url
    assert "1 items share a title with a lower item id; they got the suffix ' [item <id>]'" in dataset.notes


def test_movielens_100k_reader_names_a_missing_file(tmp_path):
    write(tmp_path, "u.data", "1\t1\t1\t1\n")
    with pytest.raises(DataError, match=r"has no u.item; pass the ml-100k folder"):
        data.movielens_100k(tmp_path)


def test_movielens_latest_small_reader(tmp_path):
    write(tmp_path, "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.5,964982703\n1,3,0.5,964981247\n"
                                   "2,1,3.5,964982224\n")
    write(tmp_path, "movies.csv", 'movieId,title,genres\n1,"American President, The (1995)",Comedy|Drama\n'
                                  "3,Amélie (Fabuleux destin d'Amélie Poulain) (2001),Comedy|Romance\n")
    dataset = data.movielens_latest_small(tmp_path)
    assert dataset.ratings["title"].tolist() == ["American President, The (1995)",
                                                 "Amélie (Fabuleux destin d'Amélie Poulain) (2001)",
                                                 "American President, The (1995)"]
    assert dataset.ratings["rating"].tolist() == [4.5, 0.5, 3.5]
    assert dataset.name == "MovieLens latest-small" and dataset.licence == data.MOVIELENS_LICENCE


def test_movielens_1m_reader(tmp_path):
    write(tmp_path, "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n")
    write(tmp_path, "movies.dat", "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
                                  "661::Misérables, Les: Star Wars, A (1995)::Drama|War\n", encoding="latin-1")
    dataset = data.movielens_1m(tmp_path)
    assert dataset.ratings["title"].tolist() == ["One Flew Over the Cuckoo's Nest (1975)",
                                                 "Misérables, Les: Star Wars, A (1995)",
                                                 "One Flew Over the Cuckoo's Nest (1975)"]
    assert dataset.ratings["item"].tolist() == [1193, 661, 1193] and dataset.ratings["timestamp"].iloc[2] == 978298413
    assert dataset.name == "MovieLens 1M"


def test_tsv_with_string_ids_and_a_title_column(tmp_path):
    text = "userId\tmovieId\trating\ttitle\nann\tm1\t4\tAlpha\nbob\tm2\t2\tBeta\nbob\tm1\t5\tAlpha\n"
    dataset = table(tmp_path, text, name="ratings.tsv")
    ratings = dataset.ratings
    assert ratings["user"].tolist() == ["ann", "bob", "bob"] and ratings["item"].tolist() == ["m1", "m2", "m1"]
    assert ratings["title"].tolist() == ["Alpha", "Beta", "Alpha"] and dataset.name == "ratings.tsv"
    assert dataset.licence == "" and dataset.url == ""


def test_parquet_with_a_titles_table(tmp_path):
    pytest.importorskip("pyarrow")
    path = tmp_path / "r.parquet"
    pd.DataFrame({"u": [1, 2, 2], "i": [10, 10, 20], "stars": [1.0, 2.0, 3.0]}).to_parquet(path)
    write(tmp_path, "titles.csv", 'id,name\n10,"Ten, The"\n20,Twenty\n')
    dataset = data.ratings_table(path, "u", "i", "stars", titles_path=tmp_path / "titles.csv", title_col="name",
                                 titles_item_col="id")
    assert dataset.ratings["title"].tolist() == ["Ten, The", "Ten, The", "Twenty"]


def test_titles_table_joins_on_string_ids_and_fills_gaps(tmp_path):
    write(tmp_path, "titles.csv", "movieId,title\n007,Bond\n")
    dataset = table(tmp_path, "userId,movieId,rating\n1,007,4\n2,9,3\n", titles_path=tmp_path / "titles.csv")
    assert dataset.ratings["title"].tolist() == ["Bond", "9"]
    assert "1 items have no title; their ids stand in as titles" in dataset.notes


# load(): the dispatcher.

def test_load_detects_each_format(tmp_path):
    fake_ml100k(tmp_path / "ml-100k")
    (tmp_path / "small").mkdir()
    write(tmp_path / "small", "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4,1\n2,2,3,2\n")
    write(tmp_path / "small", "movies.csv", "movieId,title,genres\n1,A,x\n2,B,y\n")
    (tmp_path / "one").mkdir()
    write(tmp_path / "one", "ratings.dat", "1::1::5::1\n2::2::4::2\n")
    write(tmp_path / "one", "movies.dat", "1::A::x\n2::B::y\n")
    write(tmp_path, "plain.csv", "user,item,rating\n1,1,4\n2,2,3\n")
    assert data.load(tmp_path / "ml-100k").name == "MovieLens 100k"
    assert data.load(tmp_path / "small").name == "MovieLens latest-small"
    assert data.load(str(tmp_path / "one")).name == "MovieLens 1M"
    assert data.load(tmp_path / "plain.csv").name == "plain.csv"
    assert data.load(tmp_path / "plain.csv", format="table", timestamp_col=None).name == "plain.csv"
    assert data.load("synthetic").truth is not None


def test_load_passes_the_duplicate_policy_and_y_range(tmp_path):
    (tmp_path / "small").mkdir()
    write(tmp_path / "small", "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4,1\n1,1,2,2\n2,2,3,2\n")
    write(tmp_path / "small", "movies.csv", "movieId,title,genres\n1,A,x\n2,B,y\n")
    assert data.load(tmp_path / "small", on_duplicate="mean").ratings["rating"].tolist() == [3.0, 3.0]
    with pytest.raises(DataError, match="--y-range"):
        data.load("synthetic", y_range=(2, 3))


def test_load_refusals(tmp_path):
    with pytest.raises(DataError, match="holds none of u.data"):
        data.load(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        data.load(tmp_path / "nothing.csv")
    with pytest.raises(DataError, match="unknown format 'csv'; pass --format"):
        data.load(tmp_path, format="csv")
    with pytest.raises(DataError, match="--rating-col can only be used with a ratings file"):
        data.load("synthetic", rating_col="stars")


def test_default_path_falls_back_to_fastai_download(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTAI_HOME", str(tmp_path / "empty-home"))
    monkeypatch.delenv("HFCF_ML100K_URL", raising=False)
    seeded = fake_ml100k(tmp_path / "downloaded")
    fake = types.SimpleNamespace(URLs=types.SimpleNamespace(ML_100k="ml-100k-url"),
                                 untar_data=lambda url: seeded if url == "ml-100k-url" else None)
    monkeypatch.setitem(sys.modules, "fastai.data.external", fake)
    assert len(data.movielens_100k().ratings) == 5


def test_the_download_bar_leaves_no_glyph_in_a_log(tmp_path, monkeypatch, capsys):
    """Log lines began with a stray block glyph left by fastprogress's bar off a terminal."""
    monkeypatch.setenv("FASTAI_HOME", str(tmp_path / "empty-home"))
    monkeypatch.delenv("HFCF_ML100K_URL", raising=False)
    seeded = fake_ml100k(tmp_path / "downloaded")

    def untar_data(url):
        print("\u2588", end="")  # what fastprogress's bar leaves when stdout is not a terminal
        return seeded
    monkeypatch.setitem(sys.modules, "fastai.data.external",
                        types.SimpleNamespace(URLs=types.SimpleNamespace(ML_100k="u"), untar_data=untar_data))
    data.movielens_100k()
    printed = capsys.readouterr()
    assert "\u2588" not in printed.out + printed.err


def test_failed_fastai_download_says_to_pass_a_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTAI_HOME", str(tmp_path))
    monkeypatch.delenv("HFCF_ML100K_URL", raising=False)

    def offline(url):
        raise OSError("no network")

    monkeypatch.setitem(sys.modules, "fastai.data.external",
                        types.SimpleNamespace(URLs=types.SimpleNamespace(ML_100k=""), untar_data=offline))
    with pytest.raises(DataError, match=r"could not download MovieLens 100k with fastai \(no network\); "
                                        r"pass the ml-100k folder, or put it in .*ml-100k"):
        data.movielens_100k()


def zipped(files):
    """Zip bytes holding `files` (archive name -> bytes)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def fake_ml100k_zip(tmp_path, leave_out=(), extra=None):
    """ml-100k.zip of the fake_ml100k folder, without the files in `leave_out`, plus `extra` entries."""
    folder = fake_ml100k(tmp_path / "zip-source")
    files = {f"ml-100k/{path.name}": path.read_bytes() for path in folder.iterdir() if path.name not in leave_out}
    return zipped(files | (extra or {}))


@pytest.fixture
def no_fastai(tmp_path, monkeypatch):
    """fastai looks uninstalled and FASTAI_HOME is an empty folder; returns that folder."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("FASTAI_HOME", str(home))
    monkeypatch.setitem(sys.modules, "fastai.data.external", None)  # makes the import raise ImportError
    monkeypatch.setenv("no_proxy", "*")  # a proxy set in the environment must not see 127.0.0.1
    return home


@pytest.fixture
def server(monkeypatch):
    """A local HTTP server on 127.0.0.1 that HFCF_ML100K_URL points at; set .body (None: 404), read .requests."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            state.requests += 1
            if state.body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(state.body)))
            self.end_headers()
            self.wfile.write(state.body)

        def log_message(self, *args):  # keep test output quiet
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state = types.SimpleNamespace(body=None, requests=0, url=f"http://127.0.0.1:{httpd.server_port}/ml-100k.zip")
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)  # short poll: fast shutdown
    thread.start()
    monkeypatch.setenv("HFCF_ML100K_URL", state.url)
    yield state
    httpd.shutdown()
    httpd.server_close()


def test_default_path_without_fastai_downloads_once(tmp_path, no_fastai, server):
    server.body = fake_ml100k_zip(tmp_path)
    dataset = data.movielens_100k()
    assert dataset.ratings["title"].tolist() == data.movielens_100k(tmp_path / "zip-source").ratings["title"].tolist()
    assert len(dataset.ratings) == 5 and server.requests == 1
    assert sorted(path.name for path in (no_fastai / "data").iterdir()) == ["ml-100k"]  # no scratch left
    assert len(data.movielens_100k().ratings) == 5 and server.requests == 1  # the second call reads the copy


def test_without_fastai_or_an_override_the_fastai_zip_is_fetched(no_fastai, monkeypatch):
    monkeypatch.delenv("HFCF_ML100K_URL", raising=False)
    asked = []

    def offline(url, timeout):
        asked.append((url, timeout))
        raise OSError("offline")

    monkeypatch.setattr(data.urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match=r"movielens/ml-100k.zip \(offline\)"):
        data.movielens_100k()
    assert asked == [("https://files.grouplens.org/datasets/movielens/ml-100k.zip", 30)]


def test_url_override_downloads_even_with_fastai_installed(tmp_path, no_fastai, server, monkeypatch):
    def untar_data(url):
        raise AssertionError("fastai must not download when HFCF_ML100K_URL is set")

    monkeypatch.setitem(sys.modules, "fastai.data.external",
                        types.SimpleNamespace(URLs=types.SimpleNamespace(ML_100k=""), untar_data=untar_data))
    server.body = fake_ml100k_zip(tmp_path)
    assert len(data.movielens_100k().ratings) == 5 and server.requests == 1


def closed_port_url():
    """An http URL on 127.0.0.1 where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/ml-100k.zip"


@pytest.mark.parametrize("how", ["404", "closed port"])
def test_failed_download_names_the_url_and_the_fix_and_leaves_no_folder(no_fastai, server, monkeypatch, how):
    url = server.url if how == "404" else closed_port_url()
    monkeypatch.setenv("HFCF_ML100K_URL", url)
    with pytest.raises(DataError) as error:
        data.movielens_100k()
    message = str(error.value)
    assert f"could not download MovieLens 100k from {url} (" in message
    assert ("404" if how == "404" else "refused") in message
    assert message.endswith(f"pass the ml-100k folder, or put it in {no_fastai / 'data' / 'ml-100k'}")
    assert list((no_fastai / "data").iterdir()) == []


@pytest.mark.parametrize("body, reason", [
    ("traversal", "zip entry '../evil.txt' is outside ml-100k/"),
    ("absolute", "zip entry '/evil.txt' is outside ml-100k/"),
    ("no u.data", "the zip holds no ml-100k/u.data"),
    ("not a zip", "File is not a zip file"),
])
def test_bad_zip_is_refused_and_nothing_is_extracted(tmp_path, no_fastai, server, body, reason):
    server.body = {"traversal": lambda: fake_ml100k_zip(tmp_path, extra={"../evil.txt": b"x"}),
                   "absolute": lambda: fake_ml100k_zip(tmp_path, extra={"/evil.txt": b"x"}),
                   "no u.data": lambda: fake_ml100k_zip(tmp_path, leave_out={"u.data"}),
                   "not a zip": lambda: b"<html>not found</html>"}[body]()
    with pytest.raises(DataError, match=rf"from {server.url} \({reason}\); pass the ml-100k folder, or put it in"):
        data.movielens_100k()
    assert list((no_fastai / "data").iterdir()) == []
    assert not list(tmp_path.rglob("evil.txt"))  # nothing extracted anywhere


# Splits.

def test_random_split_is_deterministic_and_keeps_validation_ids_in_train(synthetic_dataset):
    ratings = synthetic_dataset.ratings
    train, valid = data.random_split(ratings, 0.2, seed=1)
    again, _ = data.random_split(ratings, 0.2, seed=1)
    other, _ = data.random_split(ratings, 0.2, seed=2)
    assert train.index.equals(again.index) and not train.index.equals(other.index)
    assert set(valid["user"]) <= set(train["user"]) and set(valid["item"]) <= set(train["item"])
    assert len(train) + len(valid) == len(ratings) and abs(len(valid) / len(ratings) - 0.2) < 0.01
    assert train.index.is_monotonic_increasing and valid.index.is_monotonic_increasing


def test_random_split_moves_unseen_ids_to_train():
    ratings = data.validate(frame([[1, 1, 3, 0], [2, 2, 4, 0], [1, 2, 5, 0]]))[0]
    train, valid = data.random_split(ratings, 0.5, seed=0)
    assert set(valid["user"]) <= set(train["user"]) and set(valid["item"]) <= set(train["item"])


def test_random_split_refuses_a_bad_fraction(synthetic_dataset):
    with pytest.raises(DataError, match="--valid-pct 0.2"):
        data.random_split(synthetic_dataset.ratings, 1.0)


@pytest.mark.parametrize("fold", [0, 6, "1"])
def test_canonical_split_refuses_other_folds(tmp_path, fold):
    with pytest.raises(DataError, match="folds 1 to 5"):
        data.canonical_split(tmp_path, fold)


def test_canonical_split_prefers_the_fold_files(tmp_path):
    folder = fake_ml100k(tmp_path / "ml-100k")
    write(folder, "u1.base", "1\t10\t4\t1\n2\t30\t1\t2\n")
    write(folder, "u1.test", "3\t20\t2\t3\n1\t30\t5\t4\n")
    train, test = data.canonical_split(folder, 1)
    assert train[["user", "item"]].values.tolist() == [[1, 10], [2, 30]]
    assert test["title"].tolist() == ["Chasing Amy (1997)", "Chasing Amy (1997) [item 30]"]


# Synthetic data with planted structure.

def test_synthetic_is_deterministic(synthetic_dataset):
    assert synthetic_dataset.ratings.equals(data.synthetic(seed=0).ratings)
    assert not synthetic_dataset.ratings.equals(data.synthetic(seed=1).ratings)


def test_synthetic_ratings_are_half_stars_and_everyone_is_rated(synthetic_dataset):
    ratings = synthetic_dataset.ratings
    assert ratings["rating"].between(1, 5).all() and (ratings["rating"] * 2 % 1 == 0).all()
    assert ratings["user"].nunique() == 200 and ratings["item"].nunique() == 120
    assert ratings.groupby("user").size().min() >= 3 and ratings.groupby("item").size().min() >= 3
    assert ratings.drop_duplicates("item")["title"].is_unique


def test_synthetic_clusters_are_recoverable(synthetic_dataset):
    ratings, truth = synthetic_dataset.ratings, synthetic_dataset.truth
    same = ratings["user"].map(truth["user_cluster"]) == ratings["title"].map(truth["item_cluster"])
    for user, rows in ratings.groupby("user"):
        own, other = rows.loc[same[rows.index], "rating"], rows.loc[~same[rows.index], "rating"]
        assert own.empty or other.empty or own.mean() > other.mean() + 1, user


def test_synthetic_best_items_have_the_highest_mean(synthetic_dataset):
    truth = synthetic_dataset.truth
    means = synthetic_dataset.ratings.groupby("title")["rating"].mean().sort_values(ascending=False)
    assert len(truth["best_items"]) == 8
    assert set(means.index[:8]) == set(truth["best_items"])
    assert set(truth["item_cluster"]) == set(means.index) and len(truth["user_cluster"]) == 200


def test_synthetic_refuses_impossible_shapes():
    with pytest.raises(DataError, match="raise ratings_per_user"):
        data.synthetic(n_users=10, n_items=120, ratings_per_user=5)
    with pytest.raises(DataError, match="n_items >= 2 \\* n_clusters"):
        data.synthetic(n_items=6, n_clusters=4, ratings_per_user=5)


# Integration: the real MovieLens 100k copy.

@pytest.fixture(scope="module")
def real_100k(request):
    return data.movielens_100k(request.getfixturevalue("ml100k"))


@pytest.mark.integration
def test_real_100k_counts_and_titles(real_100k):
    ratings = real_100k.ratings
    assert (len(ratings), ratings["user"].nunique(), ratings["item"].nunique()) == (100_000, 943, 1682)
    titles = ratings.drop_duplicates("item")["title"]
    assert titles.is_unique and "Star Wars (1977)" in set(titles)
    suffixed = sorted(title for title in titles if " [item " in title)
    assert len(suffixed) == 18
    assert "Chasing Amy (1997) [item 268]" in suffixed and "Ice Storm, The (1997) [item 865]" in suffixed
    assert "Chasing Amy (1997)" in set(titles) and "Two Friends (1986)" in set(titles)  # trailing space stripped


@pytest.mark.integration
def test_real_100k_canonical_folds(ml100k, real_100k):
    train, test = data.canonical_split(ml100k, 1)
    assert (len(train), len(test)) == (80_000, 20_000)
    assert set(train["title"]) | set(test["title"]) <= set(real_100k.ratings["title"])
    tests = [data.canonical_split(ml100k, fold)[1] for fold in range(1, 6)]
    pairs = [set(zip(test["user"], test["item"])) for test in tests]
    assert sum(map(len, pairs)) == 100_000
    assert set().union(*pairs) == set(zip(real_100k.ratings["user"], real_100k.ratings["item"]))


@pytest.mark.integration
def test_real_100k_derived_folds_match_the_grouplens_files(ml100k, tmp_path):
    for name in ("u.data", "u.item"):
        (tmp_path / name).symlink_to(ml100k / name)
    for fold in (1, 5):
        for derived, shipped in zip(data.canonical_split(tmp_path, fold), data.canonical_split(ml100k, fold)):
            pd.testing.assert_frame_equal(derived, shipped)


@pytest.mark.integration
def test_real_100k_default_path_uses_fastai_home(ml100k, tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "ml-100k").symlink_to(ml100k)
    monkeypatch.setenv("FASTAI_HOME", str(tmp_path))
    monkeypatch.setitem(sys.modules, "fastai.data.external", None)  # proves no download is attempted
    assert len(data.movielens_100k().ratings) == 100_000
    assert data.load().name == "MovieLens 100k"
    assert len(data.canonical_split(None, 2)[1]) == 20_000


def fake_latest_small_zip(tmp_path):
    """A two-user ml-latest-small.zip (ratings.csv, movies.csv under ml-latest-small/), as GroupLens lays it out."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("ml-latest-small/ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,9\n2,2,3.5,9\n"
                                                        "1,2,5.0,9\n")
        archive.writestr("ml-latest-small/movies.csv", "movieId,title,genres\n1,Toy Story (1995),Animation\n"
                                                       "2,Heat (1995),Action\n")
    return buffer.getvalue()


def test_latest_small_is_fetched_once_for_the_app(no_fastai, server, monkeypatch, tmp_path):
    """The app re-fetches MovieLens latest-small when a model's card says it was trained on it."""
    monkeypatch.setenv("HFCF_ML_LATEST_SMALL_URL", server.url)
    server.body = fake_latest_small_zip(tmp_path)
    folder = data.movielens_latest_small_copy()
    assert folder == no_fastai / "data" / "ml-latest-small" and server.requests == 1
    assert data.movielens_latest_small(folder).ratings["title"].tolist() == ["Toy Story (1995)", "Heat (1995)",
                                                                             "Heat (1995)"]
    assert data.movielens_latest_small_copy() == folder and server.requests == 1  # the copy is reused
    server.body = None
    monkeypatch.setenv("FASTAI_HOME", str(tmp_path / "elsewhere"))
    with pytest.raises(DataError, match="could not download MovieLens latest-small from .*pass the ml-latest-small"):
        data.movielens_latest_small_copy()


def test_whole_number_ids_are_stored_in_32_bits_when_they_fit_with_the_same_fingerprint():
    """Half the memory for 25M ratings' ids; ids past 32 bits stay 64-bit, and the fingerprint that
    ties a model to its ratings file does not depend on how the ids are stored."""
    small, _ = data.validate(frame([[1, 10, 4.0], [2, 10, 3.0], [2, 11, 5.0]], ["user", "item", "rating"]))
    large, _ = data.validate(frame([[1, 10, 4.0], [2**40, 10, 3.0], [2**40, 11, 5.0]], ["user", "item", "rating"]))
    assert (small["user"].dtype, small["item"].dtype, large["user"].dtype) == ("int32", "int32", "int64")
    assert data.fingerprint(small) == data.fingerprint(small.astype({"user": "int64", "item": "int64"}))


@pytest.mark.parametrize("users, items", [
    ([-5, -5, 7, 7], [3, 4, 3, 4]),                          # negative ids: the key starts from the smallest
    ([-2**62, -2**62, 2**62, 2**62], [0, 2**40, 0, 2**40]),  # too spread out for one int64: factorized instead
    (["a", "a", "b", "b"], ["x", "y", "x", "y"]),            # text ids: factorized
    (np.array([1, 1, 2**64 - 1, 2**64 - 1], dtype=np.uint64).tolist(), [3, 4, 3, 4])])  # unsigned: factorized
def test_repeated_pairs_are_told_apart_from_distinct_ones_whatever_the_ids(users, items):
    assert not data._has_repeated_pairs(pd.Series(users), pd.Series(items))
    assert data._has_repeated_pairs(pd.Series(users + users[:1]), pd.Series(items + items[:1]))


def test_the_fingerprint_taken_in_chunks_is_the_one_of_the_whole_frame(monkeypatch):
    clean, _ = data.validate(frame([[u, i, 1.0 + (u * i) % 5] for u in range(1, 8) for i in range(1, 6)],
                                   ["user", "item", "rating"]))
    whole = data.fingerprint(clean)
    # The fingerprint as it was first written (one hash of the whole frame, a sorted copy): every model folder's
    # config.json holds one, so the formula must never change.
    rows = pd.util.hash_pandas_object(clean[["user", "item", "rating"]], index=False).to_numpy()
    assert whole["sha256"] == hashlib.sha256(np.sort(rows).tobytes()).hexdigest()
    monkeypatch.setattr(data, "FINGERPRINT_CHUNK", 3)  # 35 rows in 12 chunks, the last one short
    assert data.fingerprint(clean) == whole
    assert data.fingerprint(clean.iloc[::-1]) == whole  # row order does not matter
    assert data.fingerprint(clean.assign(rating=clean["rating"].where(clean.index != 7, 5.0))) != whole


def test_a_repeated_pair_is_found_among_many_distinct_ones():
    users, items = np.repeat(np.arange(1, 301), 40), np.tile(np.arange(1, 41), 300)
    ratings = np.full(len(users), 3.0)
    clean, notes = data.validate(pd.DataFrame({"user": users, "item": items, "rating": ratings}))
    assert len(clean) == len(users) and not any("duplicate" in note for note in notes)
    users[5000] = users[7000]
    items[5000] = items[7000]
    with pytest.raises(DataError, match="1 duplicate \\(user, item\\) pairs in 2 rows"):
        data.validate(pd.DataFrame({"user": users, "item": items, "rating": ratings}))


# Ids, names and files that read as something they are not.

@pytest.mark.parametrize("first", [10**19, 10**18])
def test_whole_number_ids_past_64_bits_stay_distinct(tmp_path, first):
    """Ids as uint64 (10**19 + k) or as floats spread over 1e18-1e20 once overflowed int64 into one shared id."""
    users = [first + k for k in range(20)] if first == 10**19 else [repr(float(first * (k + 1))) for k in range(20)]
    rows = "".join(f"{user},{item},{(k + item) % 5 + 1}\n" for k, user in enumerate(users) for item in (1, 2, 3))
    dataset = data.load(write(tmp_path, "r.csv", "user,item,rating\n" + rows))
    assert dataset.ratings["user"].nunique() == 20 and len(dataset.ratings) == 60
    expected = {str(first + k) if first == 10**19 else str(first * (k + 1)) for k in range(20)}
    assert set(dataset.ratings["user"]) == expected  # each id's exact digits: no sign wrapped, none rounded


def test_a_user_id_na_is_refused_until_it_is_renamed(tmp_path):
    rows = "user,item,rating\nann,1,4\n#na#,1,3\nbob,2,5\n"
    with pytest.raises(DataError, match=r"user id '#na#' \(data rows 2\).*rename that user in the file"):
        data.load(write(tmp_path, "r.csv", rows))
    dataset = data.load(write(tmp_path, "r.csv", rows.replace("#na#", "na")))  # the fix: any other id
    assert sorted(dataset.ratings["user"]) == ["ann", "bob", "na"]


def test_a_title_na_gets_the_item_suffix():
    ratings = frame([[1, 5, 4, "#na#"], [2, 6, 3, "Six"], [1, 6, 2, "Six"]], ["user", "item", "rating", "title"])
    clean, notes = data.validate(ratings)
    assert clean["title"].tolist() == ["#na# [item 5]", "Six", "Six"]
    assert "1 items titled '#na#', the name of the embeddings' unknown row, got the suffix ' [item <id>]'" in notes


def test_a_suffixed_title_already_taken_gets_another_suffix():
    ratings = frame([[1, 2, 4, "X [item 3]"], [1, 3, 4, "X"], [2, 1, 3, "X"]], ["user", "item", "rating", "title"])
    assert data.validate(ratings)[0]["title"].nunique() == 3


def test_an_id_listed_with_several_titles_keeps_the_first_and_says_so(tmp_path):
    write(tmp_path, "titles.csv", "movieId,title\n1,Alpha\n2,Beta\n1,Gamma\n2, Beta \n")
    dataset = table(tmp_path, "userId,movieId,rating\n1,1,4\n2,2,3\n", titles_path=tmp_path / "titles.csv")
    assert dataset.ratings["title"].tolist() == ["Alpha", "Beta"]
    assert ("1 item ids are listed with more than one title (item 1: 'Alpha', then 'Gamma'); the first title of "
            "each is kept") in dataset.notes


def test_a_movielens_ratings_file_given_alone_says_to_pass_its_folder(tmp_path):
    folder = fake_ml100k(tmp_path / "ml-100k")
    with pytest.raises(DataError, match=r"u.data is the ratings file of a MovieLens folder \(ml-100k\).*pass the "
                                        r"folder that holds it: --data " + str(folder)):
        data.load(folder / "u.data")
    assert data.load(folder).name == "MovieLens 100k"  # the fix


def test_a_table_separated_by_tabs_but_named_csv_is_read_as_tab_separated(tmp_path):
    text = "user\titem\trating\n1\t1\t4\n2\t1\t3\n2\t2\t5\n"
    dataset = data.load(write(tmp_path, "r.csv", text))
    assert len(dataset.ratings) == 3 and dataset.read_as["columns"]["sep"] == "\t"


@pytest.mark.parametrize("text", ["1,10,4\n2,10,3\n2,20,5\n", "ann,10,4\nbob,10,3\nbob,20,5\n"])
def test_a_table_without_a_header_keeps_its_first_row(tmp_path, text):
    dataset = data.load(write(tmp_path, "r.csv", text))
    assert len(dataset.ratings) == 3 and dataset.ratings["rating"].tolist() == [4, 3, 5]
    assert dataset.read_as["columns"] | {"sep": ",", "header": False, "columns": ["user", "item", "rating"]} == \
        dataset.read_as["columns"]


def test_a_titles_table_without_a_header_reads_as_item_and_title(tmp_path):
    write(tmp_path, "titles.csv", "1,Alpha\n2,Beta\n")
    text, titles = "userId,movieId,rating\n1,1,4\n2,2,3\n", tmp_path / "titles.csv"
    with pytest.raises(DataError, match=r"titles.csv has no column 'movieId' \(columns found: item, title\); pass "
                                        r"--titles-item-col item"):
        table(tmp_path, text, titles_path=titles)
    dataset = table(tmp_path, text, titles_path=titles, titles_item_col="item")  # the fix
    assert list(dataset.ratings["title"]) == ["Alpha", "Beta"]


def test_a_folder_with_other_ratings_and_movies_csvs_gives_the_flags_that_read_them(tmp_path):
    write(tmp_path, "ratings.csv", "user_id,book_id,score\n1,1,4\n2,1,3\n2,2,5\n")
    write(tmp_path, "movies.csv", "book_id,book_title\n1,A\n2,B\n")
    with pytest.raises(DataError, match=r"not MovieLens's: ratings.csv has no column 'userId'") as refused:
        data.load(tmp_path)
    flags = str(refused.value).split("naming their columns: ")[1]
    assert flags == (f"--data {tmp_path / 'ratings.csv'} --user-col user_id --item-col book_id --rating-col score "
                     f"--titles {tmp_path / 'movies.csv'} --titles-item-col book_id --title-col book_title")


def test_ratings_outside_y_range_suggest_bounds_that_hold_every_rating():
    ratings = frame([[1, 1, -9.99619996], [2, 1, 9.99114], [2, 2, 0.25]], ["user", "item", "rating"])
    with pytest.raises(DataError, match=r"pass --y-range -10,10 or a wider range"):
        data.validate(ratings, y_range=(0, 5.5))
