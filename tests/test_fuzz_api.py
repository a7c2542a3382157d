"""A property-based fuzz of the public API on the small synthetic model: every call either answers, with an answer
that keeps the call's promises, or raises an HfcfError with a message. Never another exception, and never an empty
answer where there was something to answer.

Derandomized with a bounded number of examples, so CI runs the same calls each time in a few seconds;
HFCF_FUZZ_EXAMPLES=2000 digs deeper.
"""
import math
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hfcf import Recommender, vocab
from hfcf.errors import HfcfError
from hfcf.kinds import preferred
from hfcf.recommend import History

MODELS = preferred()

# The autouse fixture that isolates the caches is function-scoped; it only sets environment variables.
FUZZ = settings(max_examples=int(os.environ.get("HFCF_FUZZ_EXAMPLES", 60)), deadline=None, derandomize=True,
                database=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


class Named(dict):
    """A fixture's value that a failing example names in a word, not in a page of titles."""

    def __repr__(self):
        return f"<{', '.join(self)}>"


@pytest.fixture(scope="module")
def loaded(synthetic_model, synthetic_dataset):
    """The folder loaded once, its ratings grouped once, and one Recommender a kind sharing both."""
    first = Recommender.from_pretrained(synthetic_model[0])
    history = History(synthetic_dataset.ratings, first.users, first.items)
    return Named({kind: first.sibling(kind).attach_history(history) for kind in MODELS})


@pytest.fixture(scope="module")
def catalogue(loaded):
    rec = loaded["dot"]
    return Named(titles=rec.items.keys[1:], users=rec.users.ids())


def anything():
    """What a caller might pass by mistake: scalars of every kind, odd text, containers, non-finite numbers."""
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(),
                        st.text(max_size=20), st.binary(max_size=6), st.just("x" * 400), st.just("#na#"),
                        st.just(" "), st.integers(-5, 5).map(np.int64), st.floats(width=32).map(np.float32))
    return st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=5), scalars,
                                                                               max_size=2))


def a_count():
    """A usable count (n, n_items): a small one, or the whole catalogue but one."""
    return st.one_of(st.integers(1, 12), st.just(119))


def title(catalogue):
    return st.one_of(st.sampled_from(catalogue["titles"]), st.sampled_from(catalogue["titles"]).map(str.upper))


def user(catalogue):
    return st.one_of(st.sampled_from(catalogue["users"]), st.sampled_from(catalogue["users"]).map(str))


def arguments(data, **valid):
    """Keyword arguments drawn from their `valid` strategies, with one of them (or none) drawn from anything():
    every fault is tried on a call that would otherwise answer."""
    broken = data.draw(st.sampled_from([None, *valid]), label="broken")
    return {name: data.draw(anything() if name == broken else strategy, label=name)
            for name, strategy in valid.items()}


def answer_or_refusal(call):
    """call()'s answer, or None when it raised an HfcfError that says something; any other exception fails."""
    try:
        return call()
    except HfcfError as err:
        assert str(err).strip() and str(err) != repr(err.args[0] if err.args else ""), repr(err)
        return None


def check_picks(frame, rec, n, left_out, score):
    """A table of picks: the best `n` of what is left, each once, never a left-out title, scores finite, best first."""
    available = len(rec.items) - 1 - len(left_out)
    assert len(frame) == min(int(n), available), (len(frame), n, available)
    assert frame["title"].is_unique and not set(frame["title"]) & {rec.items.keys[r] for r in left_out}
    assert np.isfinite(frame[score].to_numpy(dtype=float)).all() and frame[score].is_monotonic_decreasing


@FUZZ
@given(data=st.data(), kind=st.sampled_from(MODELS))
def test_recommend(loaded, catalogue, data, kind):
    rec = loaded[kind]
    exclude = st.one_of(st.none(), st.lists(st.sampled_from(catalogue["titles"]), max_size=5),
                        st.just(catalogue["titles"]), title(catalogue))
    args = arguments(data, user=user(catalogue), n=a_count(), exclude=exclude)
    frame = answer_or_refusal(lambda: rec.recommend(**args))
    if frame is not None:
        left_out = (set(rec._item_rows(args["exclude"]).tolist()) if args["exclude"] is not None
                    else set(rec._history.of(rec.users.index(args["user"]))[0].tolist()))
        check_picks(frame, rec, args["n"], left_out, rec.kind.score_name)


@FUZZ
@given(data=st.data(), kind=st.sampled_from(MODELS))
def test_similar(loaded, catalogue, data, kind):
    rec = loaded[kind]
    args = arguments(data, item=title(catalogue), n=a_count(),
                     min_ratings=st.one_of(st.none(), st.integers(1, 60), st.just(10**9)))
    frame = answer_or_refusal(lambda: rec.similar(**args))
    if frame is not None:
        counts, row = rec._item_counts(), rec.items.index(args["item"])
        eligible = (counts >= rec._min_ratings(counts, args["min_ratings"])) & (np.arange(len(counts)) != row)
        assert 1 <= len(frame) == min(int(args["n"]), int(eligible[1:].sum()))
        assert rec.items.keys[row] not in set(frame["title"]) and frame["similarity"].between(-1, 1).all()


@FUZZ
@given(data=st.data(), kind=st.sampled_from(MODELS))
def test_who_would_like(loaded, catalogue, data, kind):
    rec = loaded[kind]
    args = arguments(data, item=title(catalogue), n=st.one_of(a_count(), st.just(200)))
    frame = answer_or_refusal(lambda: rec.who_would_like(**args))
    if frame is not None:
        assert len(frame) == int(args["n"]) and frame["user"].is_unique and "#na#" not in set(frame["user"])
        assert np.isfinite(frame[rec.kind.score_name]).all()


@FUZZ
@given(data=st.data(), kind=st.sampled_from(MODELS))
def test_predict(loaded, catalogue, data, kind):
    rec = loaded[kind]
    items = st.one_of(st.lists(st.sampled_from(catalogue["titles"]), min_size=1, max_size=6), title(catalogue))
    args = arguments(data, user=user(catalogue), items=items)
    predicted = answer_or_refusal(lambda: rec.predict(**args))
    if predicted is not None:
        items = args["items"]
        asked = 1 if isinstance(items, (str, bytes)) or not hasattr(items, "__iter__") else len(list(items))
        assert predicted.shape == (asked,)
        assert np.isfinite(predicted).all() and (predicted > rec.low).all() and (predicted < rec.high).all()


def newcomer_ratings(catalogue):
    """{title: rating} or (title, rating) pairs, mostly usable; a rating or a title may be anything."""
    rating = st.one_of(st.floats(0.01, 5.49), st.integers(1, 5), st.sampled_from([0, 5.5, 1e9, -1]))
    odd = st.one_of(st.sampled_from(catalogue["titles"]), st.text(max_size=10), st.integers())
    return st.one_of(st.dictionaries(st.sampled_from(catalogue["titles"]), rating, min_size=1, max_size=8),
                     st.lists(st.tuples(st.sampled_from(catalogue["titles"]), rating), min_size=1, max_size=6),
                     st.dictionaries(odd, st.one_of(rating, anything()), min_size=1, max_size=3),
                     st.lists(st.one_of(st.tuples(odd, rating), anything()), min_size=1, max_size=3))


@FUZZ
@given(data=st.data(), kind=st.sampled_from(MODELS))
def test_fold_in(loaded, catalogue, data, kind):
    rec = loaded[kind]
    args = arguments(data, ratings=newcomer_ratings(catalogue), n=a_count(),
                     l2=st.one_of(st.just(1.0), st.floats(1e-4, 1e4), st.sampled_from([1e-6, 1e6, 0.0])))
    result = answer_or_refusal(lambda: rec.fold_in(**args))
    if result is not None:
        ratings = args["ratings"]
        rated = {rec.items.index(title) for title, _ in (ratings.items() if isinstance(ratings, dict) else ratings)}
        check_picks(result.recommendations, rec, args["n"], rated, rec.kind.score_name)
        assert np.isfinite(result.user_vector).all() and np.isfinite(result.predicted[1:]).all()


@FUZZ
@given(data=st.data(), kind=st.sampled_from(MODELS))
def test_embedding_map(loaded, data, kind):
    rec = loaded[kind]
    args = arguments(data, n_items=st.one_of(a_count(), st.just(120)), components=st.integers(1, 4),
                     pool=st.one_of(st.just(1000), st.integers(1, 200)))
    frame = answer_or_refusal(lambda: rec.embedding_map(**args))
    if frame is not None:
        assert list(frame.columns) == ["title", *[f"pc{i + 1}" for i in range(int(args["components"]))], "ratings"]
        assert len(frame) == int(args["n_items"]) and np.isfinite(frame.iloc[:, 1:-1].to_numpy(dtype=float)).all()


MUTATIONS = ["none", "sample", "shuffle", "nan rating", "inf rating", "text ratings", "object ratings",
             "titles as ids", "unknown users", "users as text", "no rating column", "empty", "another model's",
             "not a frame"]


@FUZZ
@given(mutation=st.sampled_from(MUTATIONS), seed=st.integers(0, 2**16), kind=st.sampled_from(MODELS))
def test_attach_history(loaded, synthetic_dataset, mutation, seed, kind):
    """Whatever is attached, a known user's picks afterwards are a full table that leaves out what they rated."""
    rec = Recommender(loaded[kind].folder, kind)
    ratings = mutate(synthetic_dataset.ratings[["user", "title", "rating"]], mutation, np.random.default_rng(seed))
    attached = answer_or_refusal(lambda: rec.attach_history(ratings))
    if mutation in ("nan rating", "inf rating", "text ratings", "object ratings", "titles as ids",
                    "no rating column", "empty", "not a frame"):
        assert attached is None, f"{mutation} was attached"
    if mutation == "another model's" and attached is not None:
        assert rec._history.users.keys == rec.users.keys and rec._history.items.keys == rec.items.keys
    first = int(synthetic_dataset.ratings["user"].iloc[0])
    check_picks(rec.recommend(first, 5), rec, 5, rated_rows(rec, ratings, first) if attached else set(),
                rec.kind.score_name)


def rated_rows(rec, ratings, user):
    """The item rows `user` rated in what was attached, read from the frame itself (the model's titles only)."""
    if isinstance(ratings, History):
        rated = ratings.of(rec.users.index(user))
        return set(rated[0].tolist()) if rated is not None else set()
    titles = ratings.loc[ratings["user"].astype(str) == str(user), "title"]
    return {rec.items.keys.index(title) for title in titles if title in rec.items.keys[1:]}


def mutate(ratings, mutation, rng):
    """`ratings` changed as a caller might get them wrong (or right: "none", "sample", "shuffle", "users as text")."""
    frame = ratings.copy()
    pick = rng.integers(0, len(frame), size=max(1, int(rng.integers(1, 5))))
    if mutation == "sample":
        frame = frame.sample(frac=float(rng.uniform(0.05, 1)), random_state=int(rng.integers(2**31)))
    elif mutation == "shuffle":
        frame = frame.sample(frac=1.0, random_state=int(rng.integers(2**31)))
    elif mutation in ("nan rating", "inf rating"):
        frame.loc[frame.index[pick], "rating"] = math.nan if mutation == "nan rating" else math.inf
    elif mutation == "text ratings":
        frame["rating"] = frame["rating"].astype(str)
    elif mutation == "object ratings":
        frame["rating"] = frame["rating"].astype(object)
        frame.loc[frame.index[pick], "rating"] = "five"
    elif mutation == "titles as ids":
        frame["title"] = np.arange(len(frame)) % 97 + 10_000
    elif mutation == "unknown users":
        frame.loc[frame.index[pick], "user"] = -1
    elif mutation == "users as text":
        frame["user"] = frame["user"].astype(str)
    elif mutation == "no rating column":
        frame = frame.drop(columns="rating")
    elif mutation == "empty":
        frame = frame.iloc[:0]
    elif mutation == "another model's":
        fewer = frame[frame["user"] <= int(rng.integers(1, 201))]
        return History(fewer, *vocab.from_ratings(fewer))
    elif mutation == "not a frame":
        return frame.to_dict("list")
    return frame


NOT_MODELS = ["", ".", "..", "/", "~", "~nobody-here/model", "a/b", "a/b@c", "a/b@", "-/-", "nul\x00", "x" * 300,
              "d/" + "x" * 300, "../../etc", "model", "owner/name@" + "0" * 40]


def with_examples(test):
    for text in NOT_MODELS:
        test = example(text=text, model=None)(test)
    return test


@FUZZ
@with_examples
@given(text=st.text(max_size=40), model=st.one_of(st.none(), st.sampled_from(MODELS), anything()))
def test_from_pretrained_of_what_is_not_a_model(tmp_path_factory, text, model):
    """Names of folders that do not exist and repo ids not in the (offline, empty) cache are refused, whatever the
    `model`; no file is made."""
    empty = tmp_path_factory.getbasetemp() / "fuzz-cwd"
    empty.mkdir(exist_ok=True)
    here = os.getcwd()
    os.chdir(empty)
    try:
        assert answer_or_refusal(lambda: Recommender.from_pretrained(text, model=model)) is None
    finally:
        os.chdir(here)
    assert not any(empty.iterdir())


@FUZZ
@given(model=st.one_of(st.none(), st.sampled_from(MODELS), anything()))
def test_from_pretrained_of_the_model_folder(synthetic_model, model):
    rec = answer_or_refusal(lambda: Recommender.from_pretrained(synthetic_model[0], model=model))
    assert (rec is not None) == (model is None or model in MODELS)
    if rec is not None:
        assert rec.model == (model or MODELS[0]) and len(rec.recommend(rec.users.ids()[0], 3)) == 3
