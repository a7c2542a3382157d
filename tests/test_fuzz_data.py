"""data.load on generated small files: a valid frame or an HfcfError that says what is wrong, never another error."""
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hfcf import data
from hfcf.errors import HfcfError
from hfcf.vocab import NA

# Cells that have broken readers: whole numbers past int64, floats past it, the reserved name, blanks,
# separators and quotes inside a field, non-numbers where ratings go. Most cells are plain, so most tables load.
ODD = st.one_of(
    st.sampled_from([NA, str(10**19 + 1), str(10**19 + 2), "1e20", "1.5e19"]),  # the ones that once broke a model
    st.sampled_from([str(2**63), str(-(2**63)), "1e18", "2.5", "-0.0", "nan", "inf", "", " ", "ann", " bob ", '"a,b"',
                     "x\ty", "1;2", "é", "007", "True"]))


def mostly(plain, odd=ODD, one_in=10):
    """`plain`, but `odd` once in `one_in` draws."""
    return st.integers(1, one_in).flatmap(lambda k: odd if k == 1 else plain)


IDS = mostly(st.integers(1, 6).map(str))
RATINGS = mostly(st.one_of(st.integers(1, 5).map(str), st.floats(-12, 12).map(repr)))
EXTRA = mostly(st.integers(0, 10**9).map(str), st.text(alphabet="ab1,.;\t |:-#\"", max_size=6), one_in=3)
HEADERS = st.one_of(
    st.sampled_from([["user", "item", "rating"], ["user", "item", "rating", "timestamp"],
                     ["user", "item", "rating", "title"]]),
    st.lists(st.one_of(IDS, EXTRA), min_size=1, max_size=5),  # a first data row, or names of nothing
)


@st.composite
def tables(draw):
    """(file name, bytes) of a small table: a header (or a first data row), then rows of user, item, rating and
    what else the header names (now and then a row of another width)."""
    header = draw(HEADERS)
    rows = []
    for _ in range(draw(st.integers(0, 14))):
        width = draw(st.sampled_from([len(header)] * 30 + [1, len(header) + 1]))
        row = [draw(IDS), draw(IDS), draw(RATINGS)] + [draw(EXTRA) for _ in range(max(0, width - 3))]
        rows.append(row[:width])
    separator, suffix = draw(st.sampled_from([(",", ".csv"), (",", ".csv"), ("\t", ".tsv"), (",", ".txt"),
                                              (";", ".csv")]))
    text = "\n".join(separator.join(row) for row in [header, *rows]) + draw(st.sampled_from(["", "\n"]))
    return "ratings" + suffix, text.encode("utf-8")


def check_valid(dataset, y_range):
    """The frame every loader promises: validated columns, finite ratings, unique pairs and titles."""
    ratings = dataset.ratings
    assert list(ratings.columns) == data.COLUMNS and len(ratings) > 0
    assert ratings["rating"].dtype == np.float32 and np.isfinite(ratings["rating"]).all()
    assert not ratings.duplicated(["user", "item"]).any()
    assert ratings["user"].notna().all() and ratings["item"].notna().all()
    assert ratings["user"].nunique() >= 2 and ratings["item"].nunique() >= 2
    assert NA not in set(map(str, ratings["user"])) and NA not in set(ratings["title"])
    titles = ratings.groupby("item", observed=True)["title"].nunique()
    assert (titles == 1).all() and ratings.drop_duplicates("item")["title"].is_unique
    if y_range is not None:
        assert ratings["rating"].min() >= y_range[0] and ratings["rating"].max() <= y_range[1]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table=tables(), on_duplicate=st.sampled_from(data.DUPLICATE_POLICIES),
       y_range=st.sampled_from([None, (0.0, 5.5), (-1.0, 1.0)]))
def test_load_returns_a_valid_frame_or_says_what_is_wrong(table, on_duplicate, y_range):
    name, content = table
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(content)
        try:
            dataset = data.load(path, on_duplicate=on_duplicate, y_range=y_range)
        except HfcfError as error:
            assert str(error).strip(), "an error without a message"
            return
        check_valid(dataset, y_range)

