"""What the Space shows, as data frames and plotly figures; app.py only wires these to Gradio components.

Where the model comes from: `--model`, else HFCF_MODEL, else ./model, else a demo model trained here (bootstrap).
A user's history comes from the dataset loader, never from the model repo (the MovieLens licence forbids
redistributing ratings). No gradio here, and fastai only inside `bootstrap`.
"""
import html
import importlib.util
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import DataError, HfcfError, HubError, MissingColumnError
from .card import settings_text
from .evaluate import rmse
from .kinds import KINDS, preferred
from .recommend import History, Recommender, check_n

BOTH = "both"  # the two rating models side by side
LOCAL_MODEL = Path("model")  # where train.py writes by default


# --- where the model comes from ------------------------------------------------------------------------
def resolve_model_source(cli_value=None, env=os.environ):
    """`--model`, else HFCF_MODEL, else ./model when it holds a model; None means bootstrap one."""
    for value in (cli_value, env.get("HFCF_MODEL")):
        if value and str(value).strip():
            return str(value).strip()
    return str(LOCAL_MODEL) if (LOCAL_MODEL / "config.json").is_file() else None


def load_recommenders(source):
    """{kind: Recommender} for the kinds `source` holds (in `kinds.preferred` order), from one download and one
    load."""
    first = Recommender.from_pretrained(source, model=None)
    return {kind: first if kind == first.model else first.sibling(kind) for kind in preferred(first.folder.weights)}


def bootstrap(out=LOCAL_MODEL, log=print):
    """Train a demo model with the project's pipeline when none is configured; returns (its folder, a note
    naming its data for the page).

    MovieLens 100k when it can be found or downloaded, else the synthetic set, so a fresh machine works offline.
    The folder is `out`, or a temporary one when `out` cannot be written.
    """
    if importlib.util.find_spec("fastai") is None:
        raise HfcfError("no model is configured (--model, HFCF_MODEL or ./model) and fastai is not installed to "
                        "train a demo one: pass --model owner/name or a model folder, or pip install 'hfcf[train]'")
    from . import artifacts, data, pipeline

    try:
        dataset = data.load(None)
    except DataError as err:
        log(f"MovieLens 100k is not available ({err}); training the demo model on synthetic data")
        dataset = data.synthetic()
    try:
        artifacts.check_output(out)
    except DataError as err:
        out = Path(tempfile.mkdtemp(prefix="hfcf-demo-")) / "model"
        log(f"{err}; writing the demo model to {out} instead")
    log(f"no model configured: training a demo model on {dataset.name} into {out}")
    split = pipeline.make_split(dataset)
    pipeline.train_and_save(dataset, split, out, log=log)
    return Path(out), (f"No model was configured, so this demo model was trained here on **{markdown_text(dataset.name)}** "
                       f"({len(dataset.ratings):,} ratings). Pass `--model owner/name` or set `HFCF_MODEL` "
                       "to serve a published one.")


def load_history(recommenders, ratings=None, titles=None, log=print):
    """Attach the dataset's ratings (users' histories) and return a note for the page ("" when attached).

    `ratings` (app.py --ratings, HFCF_RATINGS) is any source train.py --data takes (an hf://datasets/... URL
    included), read the way the model's config.json says its data was read (format, column flags; a titles table
    recorded there is looked for by its name beside `ratings`, and `titles` names another).
    Without it, MovieLens 100k is found or downloaded and the synthetic set regenerated. The ratings must be
    the ones the model was trained on: their fingerprint (count and hash) is checked against config.json.
    """
    from . import data

    first = next(iter(recommenders.values()))
    config = first.config["dataset"]
    name, read_as = config.get("name", "unknown data"), config.get("read_as") or {}
    try:
        if ratings is not None:
            dataset = _read_as_trained(ratings, titles, read_as)
        elif name == "MovieLens 100k":
            dataset = data.movielens_100k()
        elif name == "MovieLens latest-small":  # found under FASTAI_HOME or fetched from GroupLens
            dataset = data.movielens_latest_small(data.movielens_latest_small_copy(),
                                                  on_duplicate=read_as.get("on_duplicate", "error"))
        elif name == "synthetic":  # deterministic: regenerated, then checked against the config's record of it
            dataset = data.synthetic()
            if dataset.notes[:1] != config.get("notes", [])[:1] or len(dataset.ratings) != config.get("n_ratings"):
                raise DataError("the synthetic set was generated with other settings")
        else:
            raise DataError(_ratings_needed(name, read_as.get("source")))
        _check_fingerprint(dataset, config, ratings)
    except (DataError, HubError) as err:  # the models still serve without histories
        log(f"users' ratings unavailable: {err}")
        return (f"Users' own ratings are not available here ({markdown_text(err)}), so the first tab shows "
                "predictions only and top picks may include movies they have already rated.")
    needed = dataset.ratings[["user", "title", "rating"]]
    del dataset  # its other columns (300 MB at 25M ratings) go before the grouping's own peak
    history = History(needed, first.users, first.items, first.implicit)  # grouped once, shared by every model
    for recommender in recommenders.values():
        recommender.attach_history(history)
    return ""


def _ratings_needed(name, source):
    """Why no histories are shown for data that does not travel with the model, and the flag that brings them."""
    from . import hub

    if hub.is_hub_url(source):  # a Space reads nothing it was not told to: the owner passes the recorded URL
        return (f"the model was trained on {source}: pass --ratings {source} (or set HFCF_RATINGS to it) to read "
                "it from the Hub")
    source = Path(source or "a file").name  # folders written before recorded a full path
    return (f"the model was trained on {name if source == name else f'{name} ({source})'}, which does not travel "
            "with the model: pass that file with --ratings PATH (or set HFCF_RATINGS)")


def _read_as_trained(ratings, titles, read_as):
    """`ratings` (and `titles`) read the way the model's data was; a missing column gets a fix the app takes."""
    from . import data

    columns = dict(read_as.get("columns") or {})
    if titles or columns.get("titles_path"):
        columns["titles_path"] = titles or _titles_beside(ratings, columns["titles_path"])
    try:
        return data.load(ratings, format=read_as.get("format", "auto"), **columns,
                         on_duplicate=read_as.get("on_duplicate", "error"))
    except MissingColumnError as err:  # its fix names train.py's column flags, which the app does not take
        raise DataError(f"{err.source} has no column {err.column!r} (columns found: {', '.join(err.found)}), "
                        f"which the model's data had; pass the file the model was trained on with --ratings (its "
                        f"titles with --titles), or rename that column to {err.column!r}") from err


def _titles_beside(ratings, recorded):
    """The titles table the model was trained with, looked for beside `ratings`: config.json records its name only."""
    from . import hub

    if hub.is_hub_url(ratings):  # beside it in the same repo, at the same revision
        return f"{ratings.rsplit('/', 1)[0]}/{Path(recorded).name}"
    path = Path(ratings).expanduser().parent / Path(recorded).name
    if not path.is_file():
        raise DataError(f"the model's titles were read from {path.name}, which is not beside {Path(ratings).name}: "
                        "pass it with --titles PATH")
    return path


def _check_fingerprint(dataset, config, source):
    """Refuse ratings other than the model's (recorded by train.py since it wrote fingerprints)."""
    from . import data

    recorded = config.get("fingerprint")
    if not recorded:
        return
    found = dataset.fingerprint or data.fingerprint(dataset.ratings)
    where = Path(source).name if source else dataset.name  # the page shows it: a name, not this machine's path
    if found["n_ratings"] != recorded["n_ratings"]:
        raise DataError(f"{where} holds {found['n_ratings']:,} ratings where the model was trained on "
                        f"{recorded['n_ratings']:,}: pass the file the model was trained on")
    if found["sha256"] != recorded["sha256"]:
        raise DataError(f"{where} holds {found['n_ratings']:,} ratings, as many as the model was trained on, but "
                        "not the same ones (a user, title or rating differs): pass the file the model was trained on")


# --- the tabs ---------------------------------------------------------------------------------------------
def label(kind):
    """What the page calls a kind."""
    return KINDS[kind].label


def model_choices(recommenders, both=False, item_vectors=False):
    """(label, value) pairs for a model picker: the kinds present (those with item embeddings, when asked), and
    "both" rating models when asked and possible."""
    choices = [(label(kind), kind) for kind in recommenders if KINDS[kind].has_item_vectors or not item_vectors]
    return choices + [("both rating models, side by side", BOTH)] if both and len(_rating_kinds(recommenders)) > 1 \
        else choices


def _rating_kinds(recommenders):
    return [kind for kind in recommenders if KINDS[kind].predicts_ratings]


def _kinds(recommenders, model, both=False):
    """The kinds a tab shows for the picker's `model` (None: the first)."""
    if model is None:
        return [next(iter(recommenders))]
    if model == BOTH and both and len(_rating_kinds(recommenders)) > 1:
        return _rating_kinds(recommenders)
    if model not in recommenders:
        valid = [value for _, value in model_choices(recommenders, both)]
        raise HfcfError(f"model must be one of {', '.join(valid)} (got {str(model)[:40]!r})")
    return [model]


def markdown_text(value):
    """`value` shown literally inside a line of Markdown: dataset strings (titles, ids, names) may hold HTML or
    Markdown. HTML is escaped as entities, and the characters that start emphasis, code, links or tables inline
    get a backslash."""
    return re.sub(r"([\\`*_\[\]|~#])", r"\\\1", html.escape(str(value), quote=False))


def _tidy(frame):
    """Scores as plain 3-decimal floats: float32 shows as 4.099999904632568 in a table or JSON."""
    floats = frame.select_dtypes("floating").columns
    return frame.astype({column: "float64" for column in floats}).round(3)


def _column(name, kind, kinds):
    return name if len(kinds) == 1 else f"{name} ({label(kind)})"


def _predicted(kind, kinds):
    """The history's prediction column: "predicted", or the model's name beside the other's."""
    return "predicted" if len(kinds) == 1 else label(kind)


def rate_user(recommenders, user, model=None, n=10):
    """(summary, top picks, history with predictions, actual-vs-predicted figure) for one user of the model.

    A top-N model ranks the picks and names the rated titles behind each ("because"); the predicted ratings in
    its table and in the history come from the folder's rating model.
    """
    kinds = _kinds(recommenders, model, both=True)
    first = recommenders[kinds[0]]
    user = first.users.keys[first.users.index(user)]
    top = pd.concat([recommenders[kind].recommend(user, n).rename(
        columns=lambda name: _column(name, kind, kinds)) for kind in kinds], axis=1)
    raters = list(dict.fromkeys(recommenders[kind].rating_model for kind in kinds
                                if recommenders[kind].rating_model))
    histories = {kind: recommenders[kind].history(user) for kind in raters}
    if first.implicit:  # no ratings, so no rating model: the titles they chose
        history = first.history(user).sort_values("title", ignore_index=True)
    else:
        history = (histories[raters[0]] if raters else first.history(user))[["title", "rating"]]
        for kind in raters:
            history[_predicted(kind, raters)] = history["title"].map(histories[kind].set_index("title")["predicted"])
        history = history.sort_values(["rating", "title"], ascending=[False, True], ignore_index=True)
    top, history = _tidy(top), _tidy(history)
    if history.empty:
        return (f"User **{markdown_text(user)}**: their own ratings are not available here, so these are predictions only and may "
                "include movies they have already rated.", top, history, None)
    ranked = "" if first.kind.predicts_ratings else (
        f"the {label(first.model)} model ranks what they are likely to pick next, and \"because\" names the movies "
        "they rated that most support each pick" + (f"; \"predicted\" is the {label(first.rating_model)} model's "
                                                    "rating" if first.rating_model else ""))
    summary = (f"User **{markdown_text(user)}** {'chose' if first.implicit else 'rated'} **{len(history)}** "
               f"{'titles' if first.implicit else 'movies'}; the top picks leave those out")
    summary += f": {ranked}." if ranked else "."
    if raters:
        errors = ", ".join(f"{rmse(history[_predicted(kind, raters)], history['rating']):.2f} ({label(kind)})"
                           for kind in raters)
        summary += (f" RMSE of the predicted ratings on their ratings: {errors} (most of these ratings were trained "
                    "on, so the fit flatters the model).")
        return summary, top, history, _actual_vs_predicted(history, user, raters, first.low, first.high)
    return summary, top, history, None


def _actual_vs_predicted(history, user, kinds, low, high):
    import plotly.graph_objects as go

    figure = go.Figure()
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(history))  # fixed: the same user draws the same plot
    for kind in kinds:  # lists, not arrays: plotly would send arrays as typed-array blobs
        figure.add_scatter(x=(history["rating"] + jitter).tolist(), y=history[_predicted(kind, kinds)].tolist(),
                           mode="markers", name=label(kind), text=history["title"].tolist(),
                           customdata=history["rating"].tolist(), opacity=0.7,
                           hovertemplate="%{text}<br>rated %{customdata}, predicted %{y:.2f}<extra></extra>")
    least, most = float(history["rating"].min()), float(history["rating"].max())
    figure.add_scatter(x=[least, most], y=[least, most], mode="lines", name="perfect",
                       line={"dash": "dot", "color": "grey"})
    figure.update_layout(title=f"User {user}: actual vs predicted", xaxis_title="their rating",
                         yaxis_title="predicted rating", height=380, margin={"l": 50, "r": 20, "t": 50, "b": 40},
                         legend={"orientation": "h", "y": -0.2})
    figure.update_yaxes(range=[low, high])
    return figure


def similar(recommenders, title, model=None, n=10):
    """(summary, nearest titles with cosine similarity and, when the folder has a model with biases, their biases)."""
    recommender = recommenders[_kinds(recommenders, model)[0]]
    frame = recommender.similar(title, n)
    biased = recommender.bias_model
    if biased:
        frame["bias"] = frame["title"].map(recommender.item_biases().set_index("title")["bias"])
    name = recommender.items.keys[recommender.items.index(title)]
    bias = f"; bias is the {biased} model's per-title bias" if biased else ""
    return (f"Nearest to **{markdown_text(name)}** by cosine similarity of the {label(recommender.model)} model's item "
            f"embeddings, among titles with enough ratings to have learnt one; \"ratings\" is each title's count"
            f"{bias}.", _tidy(frame))


def who_would_like(recommenders, title, model=None, n=10):
    """(summary, the users predicted to rate `title` highest)."""
    recommender = recommenders[_kinds(recommenders, model)[0]]
    frame = recommender.who_would_like(title, n)
    name = recommender.items.keys[recommender.items.index(title)]
    if recommender.kind.predicts_ratings:
        return f"Users the {label(recommender.model)} model predicts to rate **{markdown_text(name)}** highest.", _tidy(frame)
    return f"Users the {label(recommender.model)} model finds most likely to pick **{markdown_text(name)}** next.", _tidy(frame)


NEWCOMER_COLUMNS = ["title", "rating"]
MAX_NEWCOMER_RATINGS = 100  # a request is checked against this before any title is looked up
MAX_TABLE_COLUMNS = 10  # the table takes two; a few more (pasted from a spreadsheet) are ignored
REQUEST_OVERHEAD_BYTES = 64 * 1024  # a request's JSON around the values it holds
ESCAPED_CHARACTER_BYTES = 12  # json.dumps writes a character outside the BMP as two \uXXXX escapes


def max_request_bytes(recommenders):
    """The largest request body the app reads: a full ratings table of the catalogue's longest title beside its
    longest user id, every character escaped."""
    first = next(iter(recommenders.values()))
    longest_title = max(len(str(title)) for title in first.items.keys[1:])
    characters = first.users.longest + MAX_NEWCOMER_RATINGS * longest_title
    return REQUEST_OVERHEAD_BYTES + ESCAPED_CHARACTER_BYTES * characters + 32 * MAX_NEWCOMER_RATINGS


def check_table(table):
    """Refuse a ratings table too big or ambiguous to read, before any title in it is looked up: a DataFrame, or
    the payload Gradio receives ({"headers": [...], "data": [[...], ...]}) before it reads a cell."""
    headers, rows, width = _shape(table)
    if rows > MAX_NEWCOMER_RATINGS:
        raise DataError(f"{rows:,} rows is more than the {MAX_NEWCOMER_RATINGS} ratings this page takes; keep the "
                        f"{MAX_NEWCOMER_RATINGS} movies you care most about")
    if width > MAX_TABLE_COLUMNS:
        raise DataError(f"the ratings table has {width:,} columns, more than the {MAX_TABLE_COLUMNS} this page reads; "
                        f"send two, {' and '.join(NEWCOMER_COLUMNS)}")
    repeated = next((name for i, name in enumerate(headers) if name in headers[:i]), None)
    if repeated is not None:
        raise DataError(f"the ratings table has two columns named {repeated[:40]!r}; name its columns "
                        f"{' and '.join(NEWCOMER_COLUMNS)}, once each")


def _shape(table):
    """(column names, row count, widest row) of a DataFrame or of Gradio's table payload."""
    if isinstance(table, pd.DataFrame):
        return [str(name) for name in table.columns], len(table), table.shape[1]
    headers = table.get("headers") if isinstance(table.get("headers"), list) else []
    rows = table.get("data") if isinstance(table.get("data"), list) else []
    return ([str(name) for name in headers], len(rows),
            max([len(headers), *(len(row) for row in rows if isinstance(row, list))]))


def ratings_table(table):
    """A newcomer's ratings table (as a Gradio Dataframe sends it) as a clean frame; blank rows dropped."""
    if table is None:
        return pd.DataFrame(columns=NEWCOMER_COLUMNS)
    if isinstance(table, dict) and "data" in table:  # Gradio's payload: checked before a frame is built from it
        check_table(table)
        table = pd.DataFrame(table["data"], columns=table.get("headers"))
    try:
        frame = pd.DataFrame(table)
    except ValueError as err:
        raise DataError(f"the ratings table cannot be read ({err}); send columns {' and '.join(NEWCOMER_COLUMNS)}, "
                        "one value of each a row") from None
    check_table(frame)
    frame = frame.reindex(columns=NEWCOMER_COLUMNS)
    titles = frame["title"].astype("string").str.strip()
    return frame[titles.notna() & (titles != "")].reset_index(drop=True)


def add_rating(recommenders, table, title, rating):
    """The table with `title` (resolved to its catalogue name) rated `rating`, replacing an earlier rating of it."""
    items = next(iter(recommenders.values())).items
    frame = ratings_table(table)
    name = items.keys[items.index(title)]
    frame = frame[frame["title"] != name]
    if len(frame) >= MAX_NEWCOMER_RATINGS:
        raise DataError(f"you have rated {len(frame)} movies, the most this page takes; remove one to add another")
    return pd.concat([frame, pd.DataFrame({"title": [name], "rating": [rating]})], ignore_index=True)


def newcomer(recommenders, table, model=None, n=10):
    """(summary, top picks) for someone not in the model, from a few rated titles (`fold_in`)."""
    recommender = recommenders[_kinds(recommenders, model)[0]]
    ratings = ratings_table(table)
    result = recommender.fold_in(list(zip(ratings["title"], ratings["rating"])), n)
    count = f"{len(ratings)} rating{'s' if len(ratings) > 1 else ''}"
    if result.recommendations.empty:
        return (f"From your {count}: you have rated every movie this model knows, so there is nothing left to "
                "recommend.", _tidy(result.recommendations))
    because = "" if not recommender.kind.encodes_history else " \"because\" names the movies you rated that most " \
        "support each pick."
    return (f"From your {count}, the {label(recommender.model)} model folded you in without retraining; "
            f"your top picks (the movies you rated are left out).{because}", _tidy(result.recommendations))


def biases(recommenders, n=15):
    """(highest-bias titles, lowest-bias titles) of the folder's model with biases: liked or disliked whoever watches
    them."""
    frame = next(iter(recommenders.values())).item_biases()  # one folder: its dot model's, or the library's refusal
    n = check_n(n, len(frame))
    return _tidy(frame.head(n)), _tidy(frame.tail(n).iloc[::-1].reset_index(drop=True))


def embedding_map(recommenders, model=None, n_items=50):
    """(plotly map of the most-rated titles on the top principal components, its data) for one model."""
    import plotly.graph_objects as go

    recommender = recommenders[_kinds(recommenders, model)[0]]
    frame = recommender.embedding_map(n_items, components=min(3, recommender.scorer.item_vectors().shape[1]))
    frame = _tidy(frame)
    color = frame["pc3"].tolist() if "pc3" in frame else None
    y = frame["pc2"] if "pc2" in frame else pd.Series(0.0, index=frame.index)
    figure = go.Figure(go.Scatter(
        x=frame["pc1"].tolist(), y=y.tolist(), mode="markers+text", text=frame["title"].tolist(),
        textposition="top center", textfont={"size": 9}, customdata=frame["ratings"].tolist(),
        marker={"size": 7, "color": color, "colorscale": "Viridis", "showscale": color is not None,
                "colorbar": {"title": {"text": "pc3"}}},
        hovertemplate="%{text}<br>%{customdata} ratings<br>pc1 %{x:.2f}, pc2 %{y:.2f}<extra></extra>"))
    figure.update_layout(title=f"The {len(frame)} most-rated titles on the {label(recommender.model)} model's top "
                         "principal components", xaxis_title="pc1", yaxis_title="pc2", height=560,
                         margin={"l": 50, "r": 20, "t": 50, "b": 40})
    return figure, frame


def served_name(recommender):
    """What the page calls the served model: its repo id, or a local folder's name (its path is this machine's)."""
    return recommender.source if recommender.revision else Path(recommender.source).resolve().name


def model_info(recommenders):
    """(markdown naming the repo, commit and data, the card's metrics as a table)."""
    first = next(iter(recommenders.values()))
    config, dataset = first.config, first.config["dataset"]
    commit = f"commit `{first.revision}`" if first.revision else "a local folder (no Hub commit)"
    models = "; ".join(f"**{label(kind)}**: {settings_text(kind, config['models'][kind])}" for kind in recommenders)
    text = (f"**Model** `{served_name(first)}`, {commit}.  \n"
            f"**Data** {markdown_text(dataset['name'])}: {dataset['n_ratings']:,} "
            f"{'choices' if first.implicit else 'ratings'} by {dataset['n_users']:,} users of "
            f"{dataset['n_items']:,} titles. {config['split']['description']}  \n"
            f"**Models** {models}. Trained with fastai {config.get('fastai_version', '?')}; "
            + (f"predictions lie in {tuple(config['y_range'])}." if _rating_kinds(recommenders) else
               "no rating model: " + ("the data has no ratings, only who chose what (every choice weighs 1)."
                                      if first.implicit else "the top-N model ranks, it does not predict ratings.")))
    metrics = pd.DataFrame([{"model": name, "RMSE": values["rmse"], "MAE": values["mae"]}
                            for name, values in config["metrics"].items()], columns=["model", "RMSE", "MAE"])
    ranking = pd.DataFrame([{"model": name, **values} for name, values in config.get("ranking", {}).items()])
    return text, metrics, ranking


def suggest_titles(recommenders, query, limit=10):
    """Titles for a search box (see `Recommender.search_titles`)."""
    return next(iter(recommenders.values())).search_titles(query, check_n(limit, 50))


def header(recommenders):
    """One line naming what is served."""
    first = next(iter(recommenders.values()))
    commit = f" at commit `{first.revision[:12]}`" if first.revision else ""
    labels = [label(kind) for kind in recommenders]
    kinds = " and ".join(filter(None, [", ".join(labels[:-1]), labels[-1]]))
    return (f"Serving `{served_name(first)}`{commit}: {kinds} model{'s' if len(recommenders) > 1 else ''} trained on "
            f"{markdown_text(first.config['dataset']['name'])}; {markdown_text(first.users.describe())}.")
