"""Look-ups: exact, then forgiving (case, accents, articles, year); unknown keys raise, never row 0."""
import pytest

from hfcf.errors import UnknownItemError, UnknownUserError
from hfcf.vocab import NA, ItemVocab, UserVocab, normalize_title

TITLES = [NA, "Silence of the Lambs, The (1991)", "Chasing Amy (1997)", "Chasing Amy (1997) [item 268]",
          "Misérables, Les (1995)", "Star Wars (1977)", "Star Trek: Generations (1994)", "Alien (1979)"]


@pytest.fixture
def items():
    return ItemVocab(TITLES)


@pytest.mark.parametrize("query, expected", [
    ("Silence of the Lambs, The (1991)", 1),
    ("Silence of the Lambs", 1),
    ("the silence of the lambs (1991)", 1),
    ("  SILENCE OF THE LAMBS ", 1),
    ("Chasing Amy (1997)", 2),
    ("Chasing Amy (1997) [item 268]", 3),
    ("les miserables", 4),
    ("Misérables", 4),
    ("star wars", 5),
])
def test_titles_are_found_forgivingly(items, query, expected):
    assert items.index(query) == expected


def test_an_ambiguous_title_lists_the_candidates(items):
    with pytest.raises(UnknownItemError, match="matches 2 titles") as caught:
        items.index("chasing amy")
    assert caught.value.suggestions == ["Chasing Amy (1997)", "Chasing Amy (1997) [item 268]"]


def test_an_unknown_title_suggests_close_ones(items):
    with pytest.raises(UnknownItemError, match="Did you mean: Star Wars") as caught:
        items.index("Star Warz")
    assert caught.value.suggestions[0] == "Star Wars (1977)"
    assert len(items.suggest("star")) == 2 and len(items.suggest("a", limit=5)) <= 5


@pytest.mark.parametrize("query", ["", "   ", None, NA, "x" * 1_000_000])
def test_placeholders_empty_and_huge_titles_raise(items, query):
    with pytest.raises(UnknownItemError):
        items.index(query)


def test_users_by_id_or_its_text():
    users = UserVocab([NA, 1, 2, 3, 10])
    assert users.index(2) == users.index("2") == 2
    with pytest.raises(UnknownUserError, match="valid user ids include 1, 2, 3, 10"):
        users.index(4)
    with pytest.raises(UnknownUserError):
        users.index(NA)
    assert UserVocab([NA, 1, 2, 3]).describe() == "valid user ids are 1 to 3"


def test_bulk_rows_are_exact():
    users = UserVocab([NA, "u1", "u2"])
    assert users.rows(["u2", "u1"]).tolist() == [2, 1]
    with pytest.raises(UnknownUserError):
        users.rows(["u3"])


def test_normalize_title_drops_articles_accents_and_suffix():
    assert normalize_title("Misérables, Les (1995) [item 3]") == "miserables (1995)"


def test_a_title_absent_from_the_catalogue_says_so_not_only_spelling():
    """On the synthetic demo model, a MovieLens title failed with "Check the spelling." alone."""
    items = ItemVocab([NA, "Cluster 0 Movie 001", "Cluster 1 Movie 002"])
    with pytest.raises(UnknownItemError) as caught:
        items.index("Silence of the Lambs")
    assert "among this model's 2 titles" in str(caught.value)
    assert "that this is the model you meant" in str(caught.value)
