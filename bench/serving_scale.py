"""Serving at MovieLens-25M size: load time, per-call latency and memory of a 60k-title / 160k-user model folder.

    .venv/bin/python bench/serving_scale.py                       # 160,000 users x 60,000 titles, 25M ratings
    .venv/bin/python bench/serving_scale.py --users 943 --titles 1682 --ratings 100000   # MovieLens 100k's shape
    .venv/bin/python bench/serving_scale.py --quick               # a smoke run at 20k x 6k, 1M ratings

What is measured is serving, not learning, so no training: the folder holds all three models with the large-data
default shapes (each kind's `large` settings in hfcf/kinds/: dot 32 factors, nn 32/32 embeddings and one hidden layer with BatchNorm,
of 128 units narrowed to what the catalogue affords (64 at 60k titles), topn 128 factors) filled with seeded random
numbers, written by hfcf's own `artifacts.save` and read by `Recommender.from_pretrained` with every check it makes.
The users' histories are power-law ratings (a few users and titles have most of them, as in MovieLens), attached as
the app attaches them. Like the Space, this process imports no torch and runs one OpenBLAS thread (hfcf.scoring
shares a large ranking between two threads of its own). Times are medians over `--calls` calls with a user or title
drawn at random.
"""
import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")  # what app.py runs with

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hfcf import Recommender, artifacts, scoring, vocab  # noqa: E402
from hfcf.kinds import KINDS  # noqa: E402
from hfcf.recommend import History  # noqa: E402

def settings_for(n_ratings, n_users, n_items):
    """The shapes train.py's defaults give at this size (each kind's `defaults`)."""
    return {name: {"architecture": kind.architecture, **{key: list(value) if isinstance(value, tuple) else value
                                                          for key, value in vars(kind.defaults(n_ratings, n_users,
                                                                                               n_items)).items()}}
            for name, kind in KINDS.items()}
Y_RANGE = (0.5, 5.5)


def rss_mib():
    return int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) / 1024


def random_weights(kind, settings, n_users, n_items, rng):
    """Seeded random numbers in the tensors the kind's weights file holds (BatchNorm variances kept positive)."""
    weights = {}
    for name, (dtype, shape) in KINDS[kind].tensors(settings, n_users, n_items).items():
        if dtype == "int64":
            weights[name] = np.array(1000, dtype=np.int64)
        elif name.endswith("running_var"):
            weights[name] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
        else:
            weights[name] = (rng.standard_normal(shape) * 0.1).astype(np.float32)
    return weights


def power_law_history(n_ratings, n_users, n_items, rng):
    """Ratings whose users and titles follow Zipf-like popularity, as a ratings frame (user, title, rating)."""
    def draw(n_keys):
        weights = 1 / np.arange(1, n_keys + 1) ** 0.8
        return rng.choice(n_keys, n_ratings, p=weights / weights.sum()).astype(np.int32)
    users, items = draw(n_users), draw(n_items)
    titles = pd.Categorical.from_codes(items, categories=[f"Title {i:05d} ({1950 + i % 70})" for i in range(n_items)])
    return pd.DataFrame({"user": users + 1, "title": titles,
                         "rating": rng.integers(1, 6, n_ratings).astype(np.float32)})


def write_folder(out, n_users, n_items, n_ratings, rng):
    ratings = power_law_history(n_ratings, n_users, n_items, rng)
    users = vocab.UserVocab([vocab.NA, *range(1, n_users + 1)])
    items = vocab.ItemVocab([vocab.NA, *ratings["title"].cat.categories])
    counts = np.bincount(ratings["title"].cat.codes.to_numpy() + 1, minlength=len(items))
    settings = settings_for(n_ratings, n_users, n_items)
    weights = {kind: random_weights(kind, settings[kind], len(users), len(items), rng) for kind in settings}
    config = {"library": "hfcf", "format_version": artifacts.FORMAT_VERSION, "y_range": list(Y_RANGE), "seed": 0,
              "models": settings,
              "dataset": {"name": "power-law synthetic (serving benchmark)", "n_ratings": n_ratings},
              "split": {"description": "none"}, "metrics": {}, "ranking": {}}
    artifacts.save(out, config, users, items, counts.tolist(), weights, "# serving benchmark folder\n")
    return ratings


def median_ms(call, draws, calls):
    times = []
    for value in draws[:calls]:
        started = time.perf_counter()
        call(value)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=160_000)
    p.add_argument("--titles", type=int, default=60_000)
    p.add_argument("--ratings", type=int, default=25_000_000, help="ratings in the attached histories")
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.users, args.titles, args.ratings, args.calls = 20_000, 6_000, 1_000_000, 20
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model"
        ratings = write_folder(out, args.users, args.titles, args.ratings, rng)
        size = sum(path.stat().st_size for path in out.iterdir()) / 2**20
        base = rss_mib()
        loads = []
        for _ in range(3):
            started = time.perf_counter()
            rec = Recommender.from_pretrained(out)
            loads.append(time.perf_counter() - started)
        del rec
        started = time.perf_counter()
        first = Recommender.from_pretrained(out)
        siblings = {kind: first if kind == first.model else first.sibling(kind) for kind in ("topn", "dot", "nn")}
        history = History(ratings, first.users, first.items)
        attach = time.perf_counter() - started - statistics.median(loads)
        for rec in siblings.values():
            rec.attach_history(history)
        del ratings
        loaded = rss_mib()

        users = [int(u) for u in rng.choice(first.users.ids(), args.calls)]
        titles = [str(t) for t in rng.choice(first.items.keys[1:], args.calls)]
        newcomers = [{str(t): 4.0 for t in rng.choice(first.items.keys[1:], 10, replace=False)}
                     for _ in range(args.calls)]
        rows = []
        for kind, rec in siblings.items():
            rows.append([kind, f"{median_ms(lambda u: rec.recommend(u, 10), users, args.calls):.1f}",
                         f"{median_ms(lambda t: rec.similar(t, 10), titles, args.calls):.1f}",
                         f"{median_ms(lambda t: rec.who_would_like(t, 10), titles, args.calls):.1f}",
                         f"{median_ms(lambda r: rec.fold_in(r, 10), newcomers, min(args.calls, 50)):.1f}",
                         f"{median_ms(lambda u: rec.history(u), users, args.calls):.1f}"])
        history_sizes = np.diff(history.offsets[1:])
        print(f"{args.users:,} users x {args.titles:,} titles, {args.ratings:,} ratings attached "
              f"(median {int(np.median(history_sizes))} a user, most {int(history_sizes.max()):,}); "
              f"folder {size:.0f} MiB; nn first layer {first.config['models']['nn']['layers'][0]} units; one "
              f"OpenBLAS thread, rankings of >= {scoring.PARALLEL_FROM:,} elements on {scoring.THREADS} threads\n")
        print("| load / attach / memory | |")
        print("|---|---|")
        print(f"| `Recommender.from_pretrained` (median of 3) | {statistics.median(loads):.2f} s |")
        print(f"| grouping the ratings into a `History` (shared by the three models) | {attach:.2f} s |")
        print(f"| resident memory: before loading; three models + history attached; peak | {base:.0f} MiB; "
              f"{loaded:.0f} MiB; {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB |")
        print("\n| model | recommend(user, 10) ms | similar(title, 10) ms | who_would_like(title, 10) ms | "
              "fold_in(10 ratings) ms | history(user) ms |")
        print("|---|---|---|---|---|---|")
        for row in rows:
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
