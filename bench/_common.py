"""What the bench scripts share: one thread, the data, fitting and scoring through hfcf, and a markdown table.

Each script runs from the repository root (`.venv/bin/python bench/<name>.py`) and prints one table.
"""
import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout, without installing hfcf
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

# One thread: on a small shared machine it is faster and far steadier than two (see BENCHMARKS.md).
torch.set_num_threads(1)

from hfcf import data, pipeline, vocab  # noqa: E402

Y_RANGE = (0.0, 5.5)
SEED = 42


def parser(doc):
    """An argparse parser with the options every bench script takes."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], epilog=doc.split("\n\n", 1)[1] if "\n\n" in doc
                                else None, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", metavar="PATH", help="the ml-100k folder (default: hfcf's loader, i.e. fastai's "
                   "data folder under FASTAI_HOME, downloading it if absent)")
    p.add_argument("--quick", action="store_true", help="a smoke run: one repetition or fold, fewer epochs")
    return p


def movielens(path):
    """MovieLens 100k through hfcf's loader."""
    return data.load(path, format="ml-100k")


def data_arguments(p):
    """What any-data scripts take beside train.py's own reading flags (which pass through to train.py's parser)."""
    p.add_argument("--synthetic", metavar="KIND:RATINGS[:USERSxTITLES]",
                   help="a generated set instead of --data: KIND 'taste' (users choose titles by their planted "
                   "taste) or 'power' (choices regardless of taste), e.g. taste:1000000 or taste:250000:15000x1000")
    p.add_argument("--user-share", type=float, default=1.0,
                   help="keep this seeded random share of the users (e.g. 0.5: MovieLens 100k with half its users)")
    return p


def dataset(args, reading):
    """(Dataset, y_range, a line describing it) from --synthetic, else --data read with train.py's reading flags
    (`reading`: the arguments the bench script's own parser did not know), then --user-share."""
    import tempfile

    import train

    flags = train.parser().parse_args([*(["--data", args.data] if args.data else []), *reading])
    flags.y_range = flags.y_range or pipeline.DEFAULT_Y_RANGE  # train.py leaves it unset: implicit data takes none
    if args.synthetic:
        frame, floor = synthetic_frame(args.synthetic)
        with tempfile.TemporaryDirectory() as folder:  # read back as a user's file would be: hfcf's own loader
            frame.to_parquet(f"{folder}/{args.synthetic.replace(':', '-')}.parquet", index=False)
            loaded = data.load(f"{folder}/{args.synthetic.replace(':', '-')}.parquet", y_range=flags.y_range)
        loaded.truth = {"planted_rmse": floor}
    else:
        loaded = data.load(flags.data, format=flags.format, on_duplicate=flags.on_duplicate, y_range=flags.y_range,
                           **train.table_columns(flags))
    if args.user_share < 1:
        import numpy as np

        users = loaded.ratings["user"].unique()
        kept = np.random.default_rng(SEED).permutation(users)[:max(2, round(args.user_share * len(users)))]
        loaded = dataclasses.replace(loaded, ratings=loaded.ratings[loaded.ratings["user"].isin(kept)]
                                     .reset_index(drop=True))
    ratings = loaded.ratings
    described = (f"{args.synthetic or loaded.name}"
                 + (f", {args.user_share:.0%} of its users (seed {SEED})" if args.user_share < 1 else "")
                 + f": {len(ratings):,} ratings, {ratings['user'].nunique():,} users x "
                   f"{ratings['title'].nunique():,} titles")
    return loaded, tuple(flags.y_range), described


def synthetic_frame(spec):
    """(frame, planted RMSE) of a --synthetic spec: KIND:RATINGS[:USERSxTITLES]."""
    kind, _, rest = spec.partition(":")
    size, _, shape = rest.partition(":")
    generate = {"taste": taste_chosen_ratings, "power": power_law_ratings}.get(kind)
    if generate is None or not size.isdigit():
        raise SystemExit(f"--synthetic {spec}: expected taste:RATINGS or power:RATINGS[:USERSxTITLES]")
    dims = tuple(int(part) for part in shape.split("x")) if shape else None
    return generate(int(size), seed=SEED, shape=dims)


def canonical(path, fold):
    """MovieLens 100k u{fold}.base / u{fold}.test as a pipeline Split."""
    return pipeline.make_split(None, "canonical", fold=fold, folder=path)


def vocabularies(split):
    """User and item vocabularies over both sides of a split, as train.py builds them."""
    return vocab.from_ratings(split.train, split.valid)


def fit_and_score(split, settings, kinds=("dot", "nn"), seed=SEED, y_range=Y_RANGE):
    """Fit `kinds` with hfcf's fastai training and score them on the held-out side.

    Returns ({name: {"rmse", "mae"}} for the baselines, each model and the ensemble, {kind: Fitted}).
    """
    from hfcf import training

    users, items = vocabularies(split)
    fitted = training.fit(kinds, settings, split.train, split.valid, users, items, y_range, seed, log=quiet)
    return pipeline.evaluate_models(fitted, split, users, items, y_range)[0], fitted


def quiet(*_):
    """A log function that drops fastai's per-epoch lines."""


def timed(function, *args, **kwargs):
    """(result, wall seconds) of one call."""
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def median(values):
    return statistics.median(values) if values else float("nan")


def markdown_table(headers, rows):
    """A markdown table; floats are expected to be formatted already."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def machine():
    """One line naming the machine and library versions, printed under each table."""
    import os
    import platform

    import fastai

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} thread), fastai {fastai.__version__}, Python {platform.python_version()}")


def settings_line(settings):
    """One model's training settings in a line, e.g. for a table's footnote."""
    shown = {key: value for key, value in dataclasses.asdict(settings).items() if value not in (0, 0.0, ())}
    return ", ".join(f"{key}={value}" for key, value in shown.items())


def run(main):
    """Run a script's `main`, turning hfcf's errors (no data, bad settings) into one line and exit status 1."""
    from hfcf.errors import HfcfError

    try:
        main()
    except HfcfError as error:
        raise SystemExit(f"error: {error}") from None


def power_law_ratings(n_ratings, seed=0, factors=8, noise=0.75, shape=None):
    """Exactly `n_ratings` distinct (user, title) ratings whose users and titles follow power laws (few very active
    users, few blockbusters; about MovieLens 25M's shape at 25M: 178k users x 27k titles), drawn from a planted
    low-rank taste model plus Gaussian noise, clipped to 0.5..5. Seeded; int32 ids from 1 and float32 ratings.
    Which titles a user rates does not depend on their taste: popularity is the best top-N ranking of these.
    `shape` (users, titles) overrides the power-law shape (many users with few ratings each, say).

    Returns (frame, the RMSE of the planted model itself on these ratings: the floor no model can beat).
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    n_users, n_items = shape or _power_law_shape(n_ratings)
    if n_ratings > n_users * n_items // 2:
        raise ValueError(f"{n_ratings} ratings would fill more than half of {n_users} x {n_items} pairs")
    activity = rng.pareto(1.2, n_users) + 1
    popularity = (1 / np.arange(1, n_items + 1) ** 0.9)[rng.permutation(n_items)]
    pairs = np.empty(0, np.int64)
    while len(pairs) < n_ratings:  # repeated pairs are dropped, so draw again until there are enough distinct ones
        wanted = int((n_ratings - len(pairs)) * 1.2) + 1000
        users = rng.choice(n_users, wanted, p=activity / activity.sum())
        items = rng.choice(n_items, wanted, p=popularity / popularity.sum())
        pairs = np.unique(np.concatenate([pairs, users.astype(np.int64) * n_items + items]))
    pairs = rng.permutation(pairs)[:n_ratings]  # a random subset: sorted order would favour the low user ids
    users, items = (pairs // n_items).astype(np.int32), (pairs % n_items).astype(np.int32)
    return _rate(rng, users, items, _planted_taste(rng, n_users, n_items, factors), noise)


def taste_chosen_ratings(n_ratings, seed=0, factors=8, noise=0.75, choice=1.0, shape=None):
    """Power-law ratings as `power_law_ratings`, but each user picks the titles they rate by popularity times
    exp(`choice` x their planted taste for it) (without repeats: Gumbel top-k), so what a user chose says what
    they like and a top-N model has something past popularity to learn. About `n_ratings` ratings (0.76 of it at
    1M): the heaviest users stop at half the catalogue.

    Returns (frame, the planted model's RMSE), as `power_law_ratings`.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    n_users, n_items = shape or _power_law_shape(n_ratings)
    activity = rng.pareto(1.2, n_users) + 1
    per_user = np.minimum(np.maximum(1, np.round(activity / activity.sum() * n_ratings)).astype(int), n_items // 2)
    log_popularity = np.log(1 / np.arange(1, n_items + 1) ** 0.9)[rng.permutation(n_items)].astype(np.float32)
    taste = _planted_taste(rng, n_users, n_items, factors)
    taste_u, taste_i = taste[:2]
    users, items = [], []
    for start in range(0, n_users, 512):  # 512 users' keys over the catalogue at a time
        rows = np.arange(start, min(n_users, start + 512))
        keys = (log_popularity + choice * (taste_u[rows] @ taste_i.T)
                + rng.gumbel(size=(len(rows), n_items)).astype(np.float32))
        for row, row_keys in zip(rows, keys):
            chosen = np.argpartition(-row_keys, per_user[row])[:per_user[row]]
            users.append(np.full(len(chosen), row, np.int32))
            items.append(chosen.astype(np.int32))
    return _rate(rng, np.concatenate(users), np.concatenate(items), taste, noise)


def _power_law_shape(n_ratings):
    """(users, titles) for `n_ratings` power-law ratings: ~140 ratings a user, n^0.6 titles."""
    return max(100, int(n_ratings / 140)), max(50, int(n_ratings ** 0.6))


def _planted_taste(rng, n_users, n_items, factors):
    """(user factors, item factors, user biases, item biases) of the planted model."""
    import numpy as np

    taste_u = rng.normal(0, 0.5, (n_users, factors)).astype(np.float32)
    taste_i = rng.normal(0, 0.5, (n_items, factors)).astype(np.float32)
    return taste_u, taste_i, rng.normal(0, 0.3, n_users), rng.normal(0, 0.4, n_items)


def _rate(rng, users, items, taste, noise):
    """(frame sorted by user and item, planted RMSE) of the ratings the planted `taste` gives (`users`, `items`)."""
    import numpy as np
    import pandas as pd

    taste_u, taste_i, bias_u, bias_i = taste
    signal = np.empty(len(users), np.float32)
    for start in range(0, len(users), 1 << 20):  # in chunks: a (25M, factors) product would take GBs
        rows = slice(start, start + (1 << 20))
        u, i = users[rows], items[rows]
        signal[rows] = 3.5 + bias_u[u] + bias_i[i] + np.einsum("ij,ij->i", taste_u[u], taste_i[i])
    ratings = np.clip(signal + rng.normal(0, noise, len(users)).astype(np.float32), 0.5, 5.0)
    floor = float(np.sqrt(np.mean((np.clip(signal, 0.5, 5.0) - ratings).astype(np.float64) ** 2)))
    order = np.lexsort((items, users))
    frame = pd.DataFrame({"user": users[order] + 1, "item": items[order] + 1, "rating": ratings[order]})
    return frame, floor
