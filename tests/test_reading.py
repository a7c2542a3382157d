"""Ratings files as users bring them: delimited text detected (separator, header, encoding, compression) or said
outright, wide matrices, and every refusal of the reader followed to a run that trains."""
import bz2
import gzip
import re
import shlex
import sys
import zipfile

import pytest

import train
from hfcf import artifacts, data, delimited
from hfcf.errors import DataError

USERS, ITEMS = 30, 20


def pairs():
    """(user, item) of 30 users x 20 items, two in three pairs rated."""
    return [(u, i) for u in range(1, USERS + 1) for i in range(1, ITEMS + 1) if (u + i) % 3]


def stars(u, i):
    return (u * i) % 5 + 1


# The shapes of the README's "Bring your own data", each written as its collection ships it.

def tidy_csv(folder):
    """MovieLens-like: a header, comma separated, a timestamp."""
    rows = "".join(f"{u},{i},{stars(u, i)},{881250949 + u * 100 + i}\n" for u, i in pairs())
    return write(folder, "ratings.csv", "user,item,rating,timestamp\n" + rows)


def headerless_whitespace(folder):
    """LibRec's and caserec's FilmTrust, CiaoDVD...: `1 14 5` per line, no header."""
    return write(folder, "ratings_1.txt", "".join(f"{u} {i} {stars(u, i)}\n" for u, i in pairs()))


def semicolon_latin1(folder):
    """Book-Crossing: quoted, semicolon separated, Latin-1, string ISBNs, ratings 0 to 10; titles in BX-Books.csv."""
    isbn = {i: f"03454510{i:02d}X" for i in range(1, ITEMS + 1)} | {1: "3442É4510X"}  # the real file has such ids
    books = "".join(f'"{isbn[i]}";"Les Misérables, tome {i}";"Victor Hugo"\n' for i in range(1, ITEMS + 1))
    write(folder, "BX-Books.csv", '"ISBN";"Book-Title";"Book-Author"\n' + books, encoding="latin-1")
    rows = "".join(f'"{27000 + u}";"{isbn[i]}";"{stars(u, i) * 2}"\n' for u, i in pairs())
    return write(folder, "BX-Book-Ratings.csv", '"User-ID";"ISBN";"Book-Rating"\n' + rows, encoding="latin-1")


def wide_matrix(folder):
    """Jester-like: one row per user, one column per joke, -10 to 10, 99 where not rated."""
    rated = set(pairs())
    cells = lambda u: ",".join(f"{(u * i) % 21 - 10:.2f}" if (u, i) in rated else "99" for i in range(1, ITEMS + 1))
    header = "user," + ",".join(f"joke{i}" for i in range(1, ITEMS + 1)) + "\n"
    return write(folder, "jester.csv", header + "".join(f"{u},{cells(u)}\n" for u in range(1, USERS + 1)))


def implicit_plays(folder):
    """Plays, purchases, clicks: who chose what, tab separated, no header and no rating."""
    return write(folder, "plays.tsv", "".join(f"{u}\t{i}\n" for u, i in pairs()))


SHAPES = {"ratings.csv": tidy_csv, "ratings_1.txt": headerless_whitespace, "BX-Book-Ratings.csv": semicolon_latin1,
          "jester.csv": wide_matrix, "plays.tsv": implicit_plays}


def write(folder, name, text, encoding="utf-8"):
    path = folder / name
    path.write_bytes(text.encode(encoding))
    return path


def train_main(tmp_path, capsys, argv):
    """(exit status, stdout, stderr) of train.py on `argv` with the smallest model."""
    code = train.main([*argv, "--models", "dot", "--epochs", "1", "--out", str(tmp_path / "model")])
    printed = capsys.readouterr()
    return code, printed.out, printed.err


def follow_advice(tmp_path, capsys, argv, limit=4):
    """Run train.py, and while it exits 2, add the flags its message says to pass; (final argv, the messages)."""
    messages = []
    for _ in range(limit):
        code, out, err = train_main(tmp_path, capsys, argv)
        if code != 2:
            assert code == 0, err
            return argv, messages
        messages.append(err)
        advice = re.search(r"pass ((?:--[\w-]+ (?:'[^']*'|\S+?)(?: |;|$| \(|,? or ))+)", err.strip())
        assert advice, f"a refusal without a flag to pass: {err}"
        flags = shlex.split(re.sub(r"( \(| or |;|,)$", "", advice.group(1).strip()))
        for flag, value in zip(flags[::2], flags[1::2]):
            argv = [*_without(argv, flag), flag, value]
    raise AssertionError(f"still refused after following {limit} pieces of advice: {messages}")


def _without(argv, flag):
    out, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word == flag:
            skip = True
        else:
            out.append(word)
    return out


# Detection.

@pytest.mark.parametrize("shape, sep, header, encoding", [
    (headerless_whitespace, "whitespace", False, "utf-8"), (tidy_csv, ",", True, "utf-8"),
    (semicolon_latin1, ";", True, "latin-1"), (wide_matrix, ",", True, "utf-8"), (implicit_plays, "\t", False, "utf-8")])
def test_each_shape_is_detected(tmp_path, shape, sep, header, encoding):
    reading = delimited.sniff(shape(tmp_path))
    assert (reading.sep, reading.header, reading.encoding) == (sep, header, encoding)
    titles = delimited.sniff(tmp_path / "BX-Books.csv") if shape is semicolon_latin1 else reading
    assert (titles.sep, titles.header, titles.encoding) == (sep, header, encoding)


def test_a_book_crossing_file_trains_with_its_titles_read_as_latin1(tmp_path, capsys):
    path = semicolon_latin1(tmp_path)
    code, out, err = train_main(tmp_path, capsys, [
        "--data", str(path), "--user-col", "User-ID", "--item-col", "ISBN", "--rating-col", "Book-Rating",
        "--titles", str(tmp_path / "BX-Books.csv"), "--title-col", "Book-Title", "--y-range", "0,10.5"])
    assert code == 0, err
    assert "read BX-Book-Ratings.csv: semicolon-separated, a header row, Latin-1" in out
    items = artifacts.load(tmp_path / "model").items.keys
    assert "Les Misérables, tome 1" in items and len(items) == ITEMS + 1


def test_a_headerless_whitespace_file_trains_with_no_flags_and_says_how_it_was_read(tmp_path, capsys):
    path = headerless_whitespace(tmp_path)
    code, out, err = train_main(tmp_path, capsys, ["--data", str(path)])
    assert code == 0, err
    assert "read ratings_1.txt: whitespace-separated, no header, columns user,item,rating, UTF-8" in out
    config = artifacts.load(tmp_path / "model").config["dataset"]
    assert config["n_ratings"] == len(pairs())  # the first line is a rating, not lost as a header
    assert config["read_as"]["columns"] == {"sep": "whitespace", "header": False,
                                            "columns": ["user", "item", "rating"], "encoding": "utf-8"}


@pytest.mark.parametrize("separator", ["\t", ";", "|", "  "])
def test_other_separators_and_runs_of_spaces_are_detected(tmp_path, separator):
    text = "".join(f"{u}{separator}{i}{separator}{stars(u, i)}\n" for u, i in pairs())
    dataset = data.load(write(tmp_path, "r.txt", text))
    assert len(dataset.ratings) == len(pairs()) and dataset.ratings["rating"].iloc[0] == stars(*pairs()[0])


def test_a_run_of_spaces_past_the_sample_is_still_read(tmp_path, monkeypatch):
    monkeypatch.setattr(delimited, "SNIFF_BYTES", 64)
    text = "".join(f"{u} {i} {stars(u, i)}\n" for u, i in pairs()) + "99   1  3\n"
    assert data.load(write(tmp_path, "r.txt", text)).ratings.iloc[-1].tolist()[:2] == [99, 1]


@pytest.mark.parametrize("encoding, named", [("utf-8", "UTF-8"), ("utf-8-sig", "UTF-8 with BOM"),
                                             ("latin-1", "Latin-1")])
def test_encodings_are_read_and_reported(tmp_path, encoding, named):
    rows = "".join(f"usér{u},{i},{stars(u, i)}\n" for u, i in pairs())
    dataset = data.load(write(tmp_path, "r.csv", "user,item,rating\n" + rows, encoding=encoding))
    assert dataset.ratings["user"].iloc[0] == "usér1" and "user" in dataset.ratings.columns
    assert dataset.reading.describe().endswith(named) and dataset.read_as["columns"]["encoding"] == encoding


def test_a_latin1_byte_past_the_sample_is_read_as_latin1(tmp_path, monkeypatch):
    monkeypatch.setattr(delimited, "SNIFF_BYTES", 64)
    rows = "".join(f"{u},{i},{stars(u, i)},plain {i}\n" for u, i in pairs()) + "1,99,3,Misérables\n"
    dataset = data.load(write(tmp_path, "r.csv", "user,item,rating,title\n" + rows, encoding="latin-1"))
    assert "Misérables" in set(dataset.ratings["title"]) and dataset.read_as["columns"]["encoding"] == "latin-1"


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".zip"])
def test_compressed_files_are_read_directly(tmp_path, suffix):
    text = "".join(f"{u} {i} {stars(u, i)}\n" for u, i in pairs()).encode()
    path = tmp_path / f"ratings.txt{suffix}"
    if suffix == ".zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("ratings.txt", text)
    else:
        path.write_bytes({".gz": gzip.compress, ".bz2": bz2.compress}[suffix](text))
    dataset = data.load(path)
    assert len(dataset.ratings) == len(pairs()) and dataset.read_as["columns"]["sep"] == "whitespace"


def test_the_flags_say_it_outright(tmp_path):
    path = write(tmp_path, "r.txt", "".join(f"{i}|{u}|{stars(u, i)}|0\n" for u, i in pairs()))
    dataset = data.load(path, sep="pipe", header=False, columns="item,user,rating,timestamp")
    assert dataset.ratings["user"].max() == USERS and dataset.ratings["item"].max() == ITEMS
    renamed = data.load(write(tmp_path, "h.csv", "a,b,c\n1,2,3\n2,1,4\n1,1,5\n"), columns="user,item,rating")
    assert len(renamed.ratings) == 3  # --columns replaces a header row


def test_ids_past_2_to_the_53_read_by_pyarrow_stay_exact(tmp_path):
    users = [2**60 + k for k in range(3)]
    rows = "".join(f"{u} {i} {i}\n" for u in users for i in (1, 2))
    assert set(data.load(write(tmp_path, "r.txt", rows)).ratings["user"]) == set(users)


def test_without_pyarrow_the_same_file_reads_to_the_same_fingerprint(tmp_path, monkeypatch):
    """The Space's runtime may lack pyarrow: pandas reads each shape to the ratings training saw."""
    for name, shape in SHAPES.items():
        folder = tmp_path / name
        folder.mkdir()
        options = {"format": "matrix", "missing": "99"} if shape is wide_matrix else {}
        if shape is semicolon_latin1:
            options = {"user_col": "User-ID", "item_col": "ISBN", "rating_col": "Book-Rating"}
        with_arrow = data.load(shape(folder), **options)
        with monkeypatch.context() as patched:
            patched.setitem(sys.modules, "pyarrow.csv", None)
            without = data.load(shape(folder), **options)
        assert without.fingerprint == with_arrow.fingerprint, name
        assert without.read_as == with_arrow.read_as, name


def test_words_that_pandas_would_take_for_missing_are_read_alike_with_and_without_pyarrow(tmp_path, monkeypatch):
    """Training reads with pyarrow, the Space perhaps with pandas: "NA", "None" or "null" must mean the same to both."""
    path = write(tmp_path, "r.csv", "user,item,rating,title\n" + "".join(
        f"{user},{item},{item + 1},{title}\n" for user in ("NA", "null", "7") for item, title in
        ((1, "None"), (2, "NA"), (3, "Heat"))))
    with_arrow = data.load(path)
    with monkeypatch.context() as patched:
        patched.setitem(sys.modules, "pyarrow.csv", None)
        without = data.load(path)
    assert sorted(set(with_arrow.ratings["title"])) == ["Heat", "NA", "None"]
    assert sorted(map(str, set(with_arrow.ratings["user"]))) == ["7", "NA", "null"]
    assert without.fingerprint == with_arrow.fingerprint
    assert without.ratings["title"].tolist() == with_arrow.ratings["title"].tolist()


# Wide matrices.

def test_a_wide_matrix_reads_as_user_item_rating_rows(tmp_path):
    dataset = data.load(wide_matrix(tmp_path), format="matrix", missing="99", y_range=(-10.5, 10.5))
    ratings = dataset.ratings
    assert len(ratings) == len(pairs()) and 99 not in set(ratings["rating"])
    first = ratings.iloc[0]
    u, i = pairs()[0]
    assert (first["user"], first["item"], first["rating"]) == (u, f"joke{i}", (u * i) % 21 - 10)
    assert dataset.read_as["format"] == "matrix" and dataset.read_as["columns"]["missing"] == "99"


def test_a_matrix_without_user_ids_or_header_numbers_its_rows_and_columns(tmp_path):
    path = write(tmp_path, "m.txt", "5 0 3\n0 4 1\n2 2 0\n")
    ratings = data.load(path, format="matrix", missing="0").ratings
    assert list(zip(ratings["user"], ratings["item"], ratings["rating"])) == \
        [(1, 1, 5), (1, 3, 3), (2, 2, 4), (2, 3, 1), (3, 1, 2), (3, 2, 2)]
    empty = data.load(write(tmp_path, "e.csv", "5,,3\n,4,1\n2,2,\n"), format="matrix").ratings
    assert len(empty) == 6  # empty cells are never ratings


def test_a_wide_matrix_trains_with_the_readme_command(tmp_path, capsys):
    path = wide_matrix(tmp_path)
    code, out, err = train_main(tmp_path, capsys, ["--data", str(path), "--format", "matrix", "--missing", "99",
                                                   "--y-range", "-10.5,10.5"])
    assert code == 0, err
    assert artifacts.load(tmp_path / "model").config["dataset"]["n_ratings"] == len(pairs())


def test_column_flags_of_a_long_table_are_refused_for_a_matrix(tmp_path):
    with pytest.raises(DataError, match="--item-col cannot be used with --format matrix"):
        data.load(wide_matrix(tmp_path), format="matrix", item_col="joke1")
    with pytest.raises(DataError, match="--missing can only be used with --format matrix"):
        data.load(tidy_csv(tmp_path), missing="99")
    assert len(data.load(tidy_csv(tmp_path)).ratings) == len(pairs())  # "leave them out"
    assert len(data.load(wide_matrix(tmp_path), format="matrix", missing="99").ratings) == len(pairs())


# Every refusal of the reader: its advice, followed, trains.

def defective(tmp_path, shape, old, new):
    path = shape(tmp_path)
    text = path.read_bytes().decode("latin-1")
    assert old in text
    path.write_bytes(text.replace(old, new, 1).encode("latin-1"))
    return str(path)


REFUSALS = {
    "missing columns": lambda d: ["--data", defective(d, tidy_csv, "user,item,rating", "reader,book,stars")],
    "wrong separator forced": lambda d: ["--data", str(headerless_whitespace(d)), "--sep", ","],
    "too many --columns": lambda d: ["--data", str(headerless_whitespace(d)), "--columns", "user,item,rating,a,b"],
    "negative ratings": lambda d: ["--data", str(write(d, "r.csv", "".join(
        f"{u},{i},{(u * i) % 21 - 10}\n" for u, i in pairs())))],
    "semicolon file's columns": lambda d: ["--data", str(semicolon_latin1(d)), "--y-range", "0,10.5"],
    "matrix text cell": lambda d: ["--data", defective(d, wide_matrix, ",99", ",n/r"), "--format", "matrix",
                                   "--missing", "99", "--y-range", "-10.5,10.5"],
    "matrix missing user column": lambda d: ["--data", str(wide_matrix(d)), "--format", "matrix", "--user-col", "id",
                                             "--missing", "99", "--y-range", "-10.5,10.5"],
}


@pytest.mark.parametrize("case", REFUSALS)
def test_a_refusal_exits_2_with_advice_that_trains_once_followed(case, tmp_path, capsys):
    argv, messages = follow_advice(tmp_path, capsys, REFUSALS[case](tmp_path))
    assert messages and all(message.startswith("error: ") and "Traceback" not in message for message in messages)


def test_a_text_rating_is_refused_naming_its_row_and_trains_once_that_row_is_dropped(tmp_path, capsys):
    path = defective(tmp_path, tidy_csv, "\n1,3,", "\n1,3,good#")
    code, _, err = train_main(tmp_path, capsys, ["--data", path])
    assert code == 2 and "ratings that are not finite numbers (data rows 2: 'good#" in err, err
    row = int(re.search(r"data rows (\d+)", err).group(1))
    lines = open(path).read().splitlines(keepends=True)
    open(path, "w").writelines(lines[:row] + lines[row + 1:])  # "drop those rows", as it says
    assert train_main(tmp_path, capsys, ["--data", path])[0] == 0


def test_a_wrong_separator_forced_names_the_one_detected(tmp_path, capsys):
    code, _, err = train_main(tmp_path, capsys, ["--data", str(headerless_whitespace(tmp_path)), "--sep", ";"])
    assert code == 2 and "reads as one column ('1 1 2') when split on semicolon; pass --sep whitespace" in err, err


def test_a_matrix_read_with_a_wrong_separator_is_refused_naming_the_right_one(tmp_path, capsys):
    argv = ["--data", str(wide_matrix(tmp_path)), "--format", "matrix", "--missing", "99", "--y-range", "-10.5,10.5"]
    code, _, err = train_main(tmp_path, capsys, [*argv, "--sep", "tab"])
    assert code == 2 and "jester.csv reads as one column ('user,joke1," in err and "pass --sep comma" in err, err


def test_a_file_with_no_separator_says_to_pass_one(tmp_path, capsys):
    path = write(tmp_path, "r.txt", "".join(f"{u}:{i}:{stars(u, i)}\n" for u, i in pairs()))
    code, _, err = train_main(tmp_path, capsys, ["--data", str(path)])
    assert code == 2 and "pass --sep with the character used" in err, err
    assert train_main(tmp_path, capsys, ["--data", str(path), "--sep", ":"])[0] == 0


def test_a_zip_of_several_files_says_to_unzip_it(tmp_path, capsys):
    path = tmp_path / "ratings.zip"
    text = "".join(f"{u} {i} {stars(u, i)}\n" for u, i in pairs())
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("ratings.txt", text)
        archive.writestr("README", "about")
    code, _, err = train_main(tmp_path, capsys, ["--data", str(path)])
    assert code == 2 and "ratings.zip holds 2 files; hfcf reads a .zip of exactly one: unzip it" in err, err
    zipfile.ZipFile(path).extract("ratings.txt", tmp_path)
    assert train_main(tmp_path, capsys, ["--data", str(tmp_path / "ratings.txt")])[0] == 0


def test_a_line_with_extra_fields_is_refused_naming_it(tmp_path, capsys):
    path = defective(tmp_path, tidy_csv, "\n2,2,", "\n2,2,2,3,")
    code, _, err = train_main(tmp_path, capsys, ["--data", path])
    assert code == 2 and "could not be read as comma-separated, a header row" in err and "2,2,2,3," in err, err
    bad = re.search(r"got \d+: (\S+)\)", err).group(1)
    text = open(path).read()
    open(path, "w").write(text.replace(bad + "\n", ""))  # fix that line
    assert train_main(tmp_path, capsys, ["--data", path])[0] == 0


def test_sep_names_and_bad_values(tmp_path):
    assert [delimited.parse_sep(word) for word in ("tab", "comma", "semicolon", "pipe", "space", ";")] == \
        ["\t", ",", ";", "|", "whitespace", ";"]
    with pytest.raises(DataError, match="--sep takes one character or one of tab"):
        data.load(tidy_csv(tmp_path), sep="::")


# The app reads a file the way training did.

@pytest.mark.parametrize("shape, flags, recorded", [
    (headerless_whitespace, ["--columns", "item,user,rating"],
     {"sep": "whitespace", "header": False, "columns": ["item", "user", "rating"]}),
    (wide_matrix, ["--format", "matrix", "--missing", "99", "--y-range", "-10.5,10.5"],
     {"sep": ",", "header": True, "missing": "99"}),
])
def test_the_app_reads_a_file_as_training_recorded(tmp_path, capsys, monkeypatch, shape, flags, recorded):
    """app.py --ratings takes no reading flags: config.json's read_as brings what was given and what was detected."""
    from hfcf import space

    path = shape(tmp_path)
    assert train_main(tmp_path, capsys, ["--data", str(path), *flags])[0] == 0
    recommenders = space.load_recommenders(str(tmp_path / "model"))
    calls = []
    real_load = data.load
    monkeypatch.setattr(data, "load", lambda *args, **kwargs: calls.append(kwargs) or real_load(*args, **kwargs))
    assert space.load_history(recommenders, ratings=str(path), log=lambda *_: None) == ""  # fingerprint matched
    assert calls[0] | recorded == calls[0]
    recommender = next(iter(recommenders.values()))
    if shape is headerless_whitespace:  # users are the second column, as --columns said
        assert len(recommender.history(1)) == sum(1 for _, i in pairs() if i == 1)
    else:
        assert len(recommender.history(1)) == sum(1 for u, _ in pairs() if u == 1)


def test_an_option_load_does_not_take_is_named_as_such(tmp_path):
    path = write(tmp_path, "r.csv", "user,item,rating\n1,1,4\n2,1,3\n")
    with pytest.raises(DataError, match="takes no option 'missng'"):
        data.load(path, missng="99")
    with pytest.raises(DataError, match="--missing can only be used with --format matrix"):
        data.load(path, missing="99")
