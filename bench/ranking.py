"""Ranking quality on a per-user holdout: precision@10 and NDCG@10 of `Recommender.recommend` beside popularity.

Each user's ratings are split at random (seed 42): 20% held out, the rest trains both models with
`hfcf.training.DEFAULTS` through `hfcf.pipeline.train_and_save`, as `python train.py` would. A held-out title
is relevant when it was rated 4 or 5. Every method ranks all titles the user did not rate in training (seen
items excluded) and is scored on its top 10, over the users with at least one relevant held-out title.
The ensemble ranks by the mean of both models' predicted ratings; popularity by training rating counts.

    .venv/bin/python bench/ranking.py --data ../shared/data/ml-100k
    .venv/bin/python bench/ranking.py --quick         # one epoch per model: a smoke run
"""
import dataclasses
import tempfile
from pathlib import Path

import numpy as np

import _common
from _common import timed

K = 10
RELEVANT = 4.0
HOLDOUT = 0.2


def per_user_holdout(ratings, fraction, seed):
    """(train, test): `fraction` of each user's ratings at random (at least one while two or more remain)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ratings))
    shuffled = ratings.iloc[order]
    rank = shuffled.groupby("user").cumcount().to_numpy()
    size = shuffled.groupby("user")["user"].transform("size").to_numpy()
    in_test = rank < np.where(size >= 2, np.maximum(1, np.round(size * fraction)), 0)
    return shuffled[~in_test].sort_index(), shuffled[in_test].sort_index()


def top_k(scores, seen, k):
    """Rows of the `k` highest scores, leaving out `seen` rows and row 0 (`#na#`)."""
    scores = np.asarray(scores, float).copy()
    scores[0] = -np.inf
    scores[list(seen)] = -np.inf
    best = np.argpartition(-scores, k)[:k]
    return best[np.argsort(-scores[best], kind="stable")]


def main():
    p = _common.parser(__doc__)
    p.add_argument("--seed", type=int, default=_common.SEED, help="seed of the holdout and of training (42)")
    args = p.parse_args()
    from hfcf import Recommender, evaluate, pipeline, training

    settings = dict(training.DEFAULTS)
    if args.quick:
        settings = {kind: dataclasses.replace(value, epochs=1) for kind, value in settings.items()}
    dataset = _common.movielens(args.data)
    train, test = per_user_holdout(dataset.ratings, HOLDOUT, args.seed)
    split = pipeline.Split(train, test, {"method": "per-user", "valid_pct": HOLDOUT, "seed": args.seed})
    relevant = {str(user): set(titles) for user, titles in
                test[test["rating"] >= RELEVANT].groupby("user")["title"]}
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "model"
        _, seconds = timed(pipeline.train_and_save, dataset, split, out, settings=settings, y_range=_common.Y_RANGE,
                           seed=args.seed, log=_common.quiet)
        models = {kind: Recommender.from_pretrained(out, model=kind).attach_history(train) for kind in ("dot", "nn")}
    items = models["dot"].items
    seen = {str(user): set(items.rows(titles)) for user, titles in train.groupby("user")["title"]}
    counts = np.bincount(items.rows(train["title"]), minlength=len(items))
    ensemble = (models["dot"].predict_all() + models["nn"].predict_all()) / 2
    users = sorted(relevant, key=int)
    ranked = {
        "popularity (training rating counts)": {u: [items.keys[r] for r in top_k(counts, seen[u], K)] for u in users},
        **{f"hfcf {kind} `recommend`": {u: list(model.recommend(u, n=K)["title"]) for u in users}
           for kind, model in models.items()},
        "hfcf ensemble (mean of dot and nn)": {
            u: [items.keys[r] for r in top_k(ensemble[models["dot"].users.index(u)], seen[u], K)] for u in users},
    }
    rows = []
    for name, lists in ranked.items():
        precision, ndcg = evaluate.precision_ndcg_at_k(lists, relevant, K)
        rows.append([name, f"{precision:.4f}", f"{ndcg:.4f}"])
    print(_common.markdown_table(["method", f"precision@{K}", f"NDCG@{K}"], rows))
    print()
    print(f"{len(users)} users with a relevant held-out title (rated >= {RELEVANT:g}); {len(train):,} training and "
          f"{len(test):,} held-out ratings ({HOLDOUT:.0%} of each user's, seed {args.seed}); both fits took "
          f"{seconds:.1f} s with evaluation and saving.")
    for kind, value in settings.items():
        print(f"hfcf {kind}: {_common.settings_line(value)}")
    print(_common.machine())
    if args.quick:
        print("--quick: one epoch per model: a smoke run, not a result.")


if __name__ == "__main__":
    _common.run(main)
