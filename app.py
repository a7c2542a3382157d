"""The hfcf Space: rate movies for a user, similar titles, a newcomer's picks and a look inside the model.

    python app.py                                # ./model, or a demo model trained here on first run
    python app.py --model you/movielens-cf@main  # a published model (or HFCF_MODEL=...)
    python app.py --model /path/to/folder --host 0.0.0.0 --port 7860
    python app.py --model models/books --ratings ratings.csv   # users' histories for a model trained on a file

UI wiring only: what each tab shows comes from hfcf.space; hfcf errors become gr.Error in `user_errors`.
"""
import argparse
import functools
import html
import json
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # off unless the user turned it on
# One OpenBLAS thread unless told otherwise: on a small, busy CPU box its threads spin against each other (the PCA
# map's SVD ran 100x slower on two); hfcf.scoring shares a large ranking between two threads itself.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import gradio as gr  # noqa: E402
import pydantic  # noqa: E402
from gradio.components.dataframe import DataframeData  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402

from hfcf import space  # noqa: E402
from hfcf.data import IMPLICIT_RATING  # noqa: E402
from hfcf.errors import HfcfError  # noqa: E402

CONCURRENCY = 4     # handlers take milliseconds; more threads than this only contend for the CPU
QUEUE_SIZE = 256    # waiting requests beyond this are refused ("queue is full") instead of piling up
MAX_N = 50
MAX_USER_CHOICES = 2000  # more ids can still be typed; the dropdown lists the first ones
MAX_REQUEST_BYTES = 1024 * 1024  # when `serve` is not told the served models' own bound
# A refused request shows its message in a toast. Gradio's progress display ("full" or "minimal") would also put
# a red "Error" badge over every output and blank the tables until the next answer; hidden, the previous answer
# stays readable. Answers take milliseconds, so there is no wait to show.
PROGRESS = "hidden"
NAVIGATION_KEYS = {"ArrowUp", "ArrowDown", "ArrowLeft", "ArrowRight", "Enter", "Escape", "Tab"}


def user_errors(fn):
    """Turn hfcf's errors (a user's mistake, with the fix in the message) into gr.Error: no traceback shown.

    Messages quote what the user typed and Gradio renders them as HTML, so <, > and & are escaped.
    """
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except HfcfError as err:
            raise gr.Error(html.escape(str(err), quote=False), print_exception=False) from None
    return wrapper


class _TableData(DataframeData):
    """Gradio validates a table's shape before `preprocess`: an oversized or malformed one gets a plain gr.Error."""

    @classmethod
    def model_validate(cls, obj, **kwargs):
        if isinstance(obj, dict):  # before validating every cell
            user_errors(space.check_table)(obj)
        try:
            return super().model_validate(obj, **kwargs)
        except pydantic.ValidationError:
            raise gr.Error('a table must look like {"headers": ["title", "rating"], "data": [["Fargo (1996)", 4]]}',
                           print_exception=False) from None


class _RequestLimit:
    """ASGI middleware refusing a request body over `limit` bytes before Gradio parses it: Gradio walks every
    value of a request (looking for files) before any component's check can run."""

    def __init__(self, app, limit):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        messages, size = [], 0
        while True:  # over the limit, the rest is read and dropped: a client still sending would miss the answer
            message = await receive()
            size += len(message.get("body", b""))
            if size <= self.limit:
                messages.append(message)
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        if size > self.limit:
            return await self._refuse(send, size)

        async def replay():
            return messages.pop(0) if messages else await receive()

        return await self.app(scope, replay, send)

    async def _refuse(self, send, size):
        detail = (f"this request is {size:,} bytes, over the {self.limit:,} this app reads (a full table of "
                  f"{space.MAX_NEWCOMER_RATINGS} ratings fits): send fewer or shorter values")
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def checked(component):
    """`component` with Gradio's own checks of an input (out of range, not among the choices, of the wrong type,
    an oversized table: what an API caller can send) answered as a gr.Error that names the input, with no
    traceback in the server log. Instance attributes, not a subclass: Gradio writes a .pyi file beside the
    module that defines a component subclass."""
    preprocess = component.preprocess

    def checked_preprocess(payload):
        if isinstance(component, gr.Slider) and (isinstance(payload, bool) or not isinstance(payload, (int, float))):
            raise gr.Error(html.escape(f"{component.label}: expected a number from {component.minimum:g} to "
                                       f"{component.maximum:g} (got {str(payload)[:40]!r})", quote=False),
                           print_exception=False)
        try:
            return preprocess(payload)
        except Exception as err:  # Gradio raises its Error, TypeError or ValueError here, depending on the component
            message = str(err.args[0] if isinstance(err, gr.Error) and err.args else err)[:300]
            raise gr.Error(html.escape(f"{component.label}: {message}", quote=False), print_exception=False) from None

    component.preprocess = checked_preprocess
    if isinstance(component, gr.Dataframe):
        component.data_model = _TableData
    return component


class _Page:
    """What every tab builds its widgets from: the served models and the helpers that make their inputs."""

    def __init__(self, recommenders):
        self.recommenders = recommenders
        self.first = next(iter(recommenders.values()))
        self.popular = self.first.search_titles("", 1)[0]

    def bound(self, fn):
        """space.fn with the models bound; named and documented as fn for the API page."""
        call = user_errors(functools.partial(fn, self.recommenders))
        call.__name__, call.__doc__ = fn.__name__, fn.__doc__
        return call

    def model_picker(self, both=False, item_vectors=False):
        choices = space.model_choices(self.recommenders, both, item_vectors)
        return checked(gr.Radio(choices, value=choices[0][1], label="Model"))

    def n_slider(self, label, maximum=MAX_N, value=10, minimum=1):
        return checked(gr.Slider(minimum, maximum, value=min(value, maximum), step=1, precision=0, label=label))

    def title_picker(self, label, value=None):
        first = self.first
        box = gr.Dropdown(first.search_titles("", 20), value=value, label=label, allow_custom_value=True,
                          filterable=True, info="type to search, then pick a title")

        def suggest(data: gr.KeyUpData):
            if data.key in NAVIGATION_KEYS:
                return gr.skip()
            return gr.Dropdown(choices=first.search_titles(data.input_value[:first.items.longest], 20))

        box.key_up(suggest, None, box, queue=False, show_progress="hidden", api_visibility="private")
        return box

    @staticmethod
    def table(label, value, **kwargs):
        return gr.Dataframe(value, label=label, interactive=False, max_height=420, **kwargs)

    def rating_input(self):
        """A newcomer's rating: a slider over the data's range, or a hidden 1 where the data had no ratings."""
        if self.first.implicit:
            return gr.Number(IMPLICIT_RATING, label="Your rating", visible=False)
        low, high = self.first.config["dataset"].get("rating_range", self.first.folder.y_range)
        return gr.Slider(low, high, value=min(high, max(low, 4)), step=0.5, label="Your rating")

    @property
    def has_item_vectors(self):
        return bool(space.model_choices(self.recommenders, item_vectors=True))


def build_demo(recommenders, note=""):
    """The Blocks app for {kind: Recommender} (`space.load_recommenders`): any of the kinds of hfcf.kinds."""
    page = _Page(recommenders)
    with gr.Blocks(title="hfcf: MovieLens recommendations", fill_width=True) as demo:
        gr.Markdown("# hfcf: collaborative filtering on MovieLens\n" + space.header(recommenders))
        if note:
            gr.Markdown(note, elem_id="note")
        user_tab(page)
        if page.has_item_vectors:
            similar_tab(page)
        newcomer_tab(page)
        inside_tab(page)
        api(page)
    return demo


def user_tab(page):
    """What to watch next for a user of the model, beside what they rated."""
    first, recommenders = page.first, page.recommenders
    with gr.Tab("What to watch next", id="user"):
        ids = [str(user) for user in first.users.ids()[:MAX_USER_CHOICES]]
        with gr.Row():
            user = gr.Dropdown(ids, value=ids[0], label="User", info=first.users.describe(),
                               allow_custom_value=True, filterable=True)
            user_model = page.model_picker(both=True)
            user_n = page.n_slider("Top picks")
        user_go = gr.Button("Recommend", variant="primary")
        summary, top, history, figure = space.rate_user(recommenders, ids[0], user_model.value, 10)
        user_summary = gr.Markdown(summary)
        user_top = page.table("Top picks they have not rated", top, wrap=True)
        predicts = any(rec.rating_model for rec in recommenders.values())  # else there is nothing to plot
        with gr.Row(equal_height=True):
            user_history = page.table("What they rated, beside the model's prediction" if predicts else
                                      "What they chose" if first.implicit else "What they rated", history, scale=3,
                                      column_widths=["50%"])  # long titles would push the predictions out of view
            user_plot = gr.Plot(figure, label="Actual vs predicted", scale=2, visible=predicts)
        gr.on([user_go.click, user.input, user_model.input], page.bound(space.rate_user), [user, user_model, user_n],
              [user_summary, user_top, user_history, user_plot], api_name="rate_user", show_progress=PROGRESS)


def similar_tab(page):
    """The titles nearest to one by their item embeddings."""
    with gr.Tab("Similar titles", id="similar"):
        with gr.Row():
            similar_title = page.title_picker("Title", page.popular)
            similar_model = page.model_picker(item_vectors=True)
            similar_n = page.n_slider("How many titles")
        similar_go = gr.Button("Find similar titles", variant="primary")
        summary, frame = space.similar(page.recommenders, page.popular, similar_model.value, 10)
        similar_summary = gr.Markdown(summary)
        similar_table = page.table("Nearest titles", frame)
        gr.on([similar_go.click, similar_title.input], page.bound(space.similar),
              [similar_title, similar_model, similar_n], [similar_summary, similar_table], api_name="similar",
              show_progress=PROGRESS)


def newcomer_tab(page):
    """Picks for someone not in the model, from a few titles they rate here."""
    implicit = page.first.implicit
    with gr.Tab("New here? Pick a few titles" if implicit else "New here? Rate a few movies", id="newcomer"):
        with gr.Row():
            new_title = page.title_picker("A title you chose" if implicit else "A movie you have seen")
            new_rating = checked(page.rating_input())
        with gr.Row():
            new_add = gr.Button("Add it" if implicit else "Add rating")
            new_clear = gr.Button("Clear")
        new_ratings = checked(gr.Dataframe(space.ratings_table(None), label="Your ratings (edit them here too)",
                                           headers=space.NEWCOMER_COLUMNS, datatype=["str", "number"],
                                           interactive=True, max_height=300))
        with gr.Row():
            new_model = page.model_picker()
            new_n = page.n_slider("Picks for you")
        new_go = gr.Button("Recommend for me", variant="primary")
        new_summary = gr.Markdown("Add one or more movies you have seen, then ask for recommendations.")
        new_table = page.table("Your top picks", None, headers=["title", "predicted"], wrap=True)
        new_add.click(page.bound(space.add_rating), [new_ratings, new_title, new_rating], new_ratings,
                      api_name="add_rating", show_progress=PROGRESS)
        new_clear.click(lambda: space.ratings_table(None), None, new_ratings, api_name="clear_ratings")
        new_go.click(page.bound(space.newcomer), [new_ratings, new_model, new_n], [new_summary, new_table],
                     api_name="newcomer", show_progress=PROGRESS)


def inside_tab(page):
    """The card's figures, the title biases, the embedding map and who would like a title."""
    recommenders, first = page.recommenders, page.first
    with gr.Tab("Inside the model", id="inside"):
        text, metrics, ranking = space.model_info(recommenders)
        gr.Markdown(text)
        if not metrics.empty:
            page.table("Held-out rating error (from the model card)", metrics)
        if not ranking.empty:
            page.table("Held-out top-10 quality (from the model card)", ranking)
        if first.bias_model:
            gr.Markdown(f"### Title biases ({first.bias_model} model)\nA high bias: people rate it well even if it is "
                        "not their kind of movie. A low bias: disliked even by those who like its kind.")
            highest, lowest = space.biases(recommenders, 10)
            with gr.Row():
                bias_n = page.n_slider("Titles per list", value=10)
                bias_go = gr.Button("Show biases")
            with gr.Row():
                bias_high = page.table("Highest bias", highest)
                bias_low = page.table("Lowest bias", lowest)
            bias_go.click(page.bound(space.biases), bias_n, [bias_high, bias_low], api_name="biases",
                          show_progress=PROGRESS)
        if page.has_item_vectors:
            embedding_map(page)
        who_would_like(page)


def embedding_map(page):
    gr.Markdown("### The map of the most-rated titles\nTheir item embeddings projected on the top "
                "principal components (the book's PCA plot); hover for titles.")
    with gr.Row():
        map_model = page.model_picker(item_vectors=True)
        map_n = page.n_slider("Titles on the map", maximum=min(300, len(page.first.items) - 1), value=50, minimum=2)
        map_go = gr.Button("Draw the map")
    figure, frame = space.embedding_map(page.recommenders, map_model.value, map_n.value)
    map_plot = gr.Plot(figure, label="Embedding map")
    with gr.Accordion("Map data", open=False):
        map_table = page.table("Coordinates", frame)
    map_go.click(page.bound(space.embedding_map), [map_model, map_n], [map_plot, map_table],
                 api_name="embedding_map", show_progress=PROGRESS)


def who_would_like(page):
    gr.Markdown("### Who would like it?")
    with gr.Row():
        who_title = page.title_picker("Movie", page.popular)
        who_model = page.model_picker()
        who_n = page.n_slider("How many users")
    who_go = gr.Button("Find users")
    summary, frame = space.who_would_like(page.recommenders, page.popular, who_model.value, 10)
    who_summary = gr.Markdown(summary)
    who_table = page.table("Users predicted to rate it highest", frame)
    gr.on([who_go.click, who_title.input], page.bound(space.who_would_like), [who_title, who_model, who_n],
          [who_summary, who_table], api_name="who_would_like", show_progress=PROGRESS)


def api(page):
    """The endpoints that are not a tab's."""
    recommenders, first = page.recommenders, page.first

    @user_errors
    def suggest_titles(query: str, limit: int = 10) -> list[str]:
        """Titles matching `query` for a search box, best first (up to 50)."""
        return space.suggest_titles(recommenders, query, limit)

    def model_info() -> dict:
        """The served model: source, commit, dataset and the card's held-out metrics."""
        return {"source": space.served_name(first), "revision": first.revision, "models": list(recommenders),
                "dataset": first.config["dataset"]["name"], "metrics": first.config["metrics"]}

    gr.api(suggest_titles, api_name="suggest_titles")
    gr.api(model_info, api_name="model_info")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="a Hub repo id (owner/name or owner/name@revision) or a local model folder "
                   "(default: HFCF_MODEL, then ./model, else a demo model trained here)")
    p.add_argument("--ratings", metavar="PATH", help="the ratings the model was trained on, for users' histories: "
                   "any source train.py --data takes, a Hub dataset file hf://datasets/OWNER/NAME[@REVISION]/PATH "
                   "included, read as the model's config.json records (default: HFCF_RATINGS; MovieLens 100k and "
                   "the synthetic set are found without it)")
    p.add_argument("--titles", metavar="PATH", help="the titles table, when it is not beside --ratings under "
                   "the name config.json records")
    p.add_argument("--host", help="address to listen on (default: GRADIO_SERVER_NAME or 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: GRADIO_SERVER_PORT or 7860)")
    p.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        source, note = space.resolve_model_source(args.model), ""
        if source is None:
            source, note = space.bootstrap()
        recommenders = space.load_recommenders(source)
        history = space.load_history(recommenders, args.ratings or os.environ.get("HFCF_RATINGS") or None,
                                     args.titles)
        note = " ".join(filter(None, [note, history]))
    except HfcfError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    serve(build_demo(recommenders, note), args.host, args.port, args.share,
          max_request_bytes=space.max_request_bytes(recommenders))
    return 0


def serve(demo, host=None, port=None, share=False, max_request_bytes=MAX_REQUEST_BYTES, **launch_kwargs):
    """Launch with a bounded queue and concurrency, refusing file uploads (the app takes none) and request bodies
    over `max_request_bytes` (`space.max_request_bytes` of the served models)."""
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)
    return demo.launch(server_name=host, server_port=port, share=share, max_file_size="1kb",
                       app_kwargs={"middleware": [Middleware(_RequestLimit, limit=max_request_bytes)]}, **launch_kwargs)


if __name__ == "__main__":
    sys.exit(main())
