"""What to watch next: top-10 quality of hfcf's models on MovieLens 100k beside popularity and EASE.

The protocol of Microsoft Recommenders' MovieLens 100k tables: for each user, shuffle their ratings (seed) and
keep the first 75% (rounded) for training, the rest as test. Every test title is relevant, whatever its rating.
Each method ranks every title the user did not rate in training and is scored on its top 10: precision@10,
NDCG@10 (binary gains), recall@10, catalogue coverage and the mean overlap of two users' lists, means over users
with test titles, then the mean over the seeds.

hfcf's rows are what a user gets: `hfcf.pipeline.train_and_save` with train.py's defaults (all models, the test
ratings as its held-out part), then `Recommender.from_pretrained(folder[, model=...])`, `attach_history(train)`
and `recommend(user, 10)` for every user; the ensemble ranks by the mean of the dot and nn predicted ratings.
Baselines: popularity (training rating counts) and EASE (Steck 2019, closed form, lambda 500), in numpy.

    .venv/bin/python bench/ranking.py --data ../shared/data/ml-100k              # seeds 42 43 44, ~1 min
    .venv/bin/python bench/ranking.py --data ../shared/data/ml-100k --seeds 42   # one split
    .venv/bin/python bench/ranking.py --quick                                    # one seed, 2 epochs: a smoke run
"""
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np

import _common

K = 10
TRAIN_SHARE = 0.75
EASE_LAMBDA = 500.0
METRICS = (f"precision@{K}", f"ndcg@{K}", f"recall@{K}", "coverage", "overlap")
# Published on the same protocol (Microsoft Recommenders' MovieLens 100k benchmark notebook); never measured here.
PUBLISHED = [("BiVAE (MS Recommenders, published)", 0.412, 0.475), ("BPR, Cornac (MS Recommenders, published)",
                                                                     0.388, 0.442),
             ("LightGCN (MS Recommenders, published)", 0.380, None), ("NCF (MS Recommenders, published)", 0.347, None),
             ("SAR (MS Recommenders, published)", 0.331, None)]


def per_user_split(ratings, train_share, seed):
    """(train, test): each user's ratings shuffled with `seed`, the first `train_share` (rounded) trained on."""
    shuffled = ratings.iloc[np.random.default_rng(seed).permutation(len(ratings))]
    rank = shuffled.groupby("user").cumcount().to_numpy()
    size = shuffled.groupby("user")["user"].transform("size").to_numpy()
    in_train = rank < np.round(size * train_share)
    return shuffled[in_train].sort_index(), shuffled[~in_train].sort_index()


def ease_scores(train_matrix, lam):
    """EASE's item-item weights B (zero diagonal) in closed form; scores are X @ B."""
    gram = train_matrix.T @ train_matrix + lam * np.eye(train_matrix.shape[1])
    inverse = np.linalg.inv(gram)
    weights = -inverse / np.diag(inverse)
    np.fill_diagonal(weights, 0.0)
    return train_matrix @ weights


def top_rows(scores, seen, k):
    """Each row's `k` best columns (by score), leaving out column 0 and `seen[row]`."""
    scores = np.array(scores, dtype=float)
    scores[:, 0] = -np.inf
    for row, columns in seen.items():
        scores[row, columns] = -np.inf
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    return np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, 1), axis=1, kind="stable"), 1)


def one_seed(dataset, seed, settings):
    """{method: (quality dict, fit seconds)} on one split."""
    from hfcf import Recommender, evaluate, pipeline

    train, test = per_user_split(dataset.ratings, TRAIN_SHARE, seed)
    split = pipeline.Split(train, test, {"method": "per-user", "train_share": TRAIN_SHARE, "seed": seed})
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "model"
        config = pipeline.train_and_save(dataset, split, out, settings=settings, y_range=_common.Y_RANGE,
                                         seed=seed, log=_common.quiet)
        default = Recommender.from_pretrained(out).attach_history(train)  # what a user gets with no arguments
        models = {kind: default.sibling(kind) for kind in ("dot", "nn")}
    users, items = default.users, default.items
    user_rows, item_rows = users.rows(train["user"]), items.rows(train["title"])
    relevant = evaluate.group_by_user(users.rows(test["user"]), items.rows(test["title"]), np.unique(users.rows(test["user"])))
    seen = evaluate.group_by_user(user_rows, item_rows, np.unique(user_rows))
    tested = [users.keys[row] for row in relevant]

    def recommended(recommender):
        return {users.index(user): items.rows(recommender.recommend(user, K)["title"]) for user in tested}

    fit = {kind: settings_["fit_seconds"] for kind, settings_ in config["models"].items()}
    results = {f"hfcf default: `from_pretrained(folder)` ({default.model})": (recommended(default), fit[default.model])}
    for kind, model in models.items():
        results[f"hfcf {kind} (rating model) `recommend`"] = (recommended(model), fit[kind])
    ensemble = (models["dot"].predict_all() + models["nn"].predict_all()) / 2
    results["hfcf ensemble (mean of dot and nn ratings)"] = (dict(zip(range(len(users)), top_rows(ensemble, seen, K))),
                                                             fit["dot"] + fit["nn"])
    matrix = np.zeros((len(users), len(items)))
    matrix[user_rows, item_rows] = 1.0
    started = time.perf_counter()
    popularity = np.broadcast_to(matrix.sum(0), matrix.shape)
    results["popularity (training rating counts)"] = (dict(enumerate(top_rows(popularity, seen, K))),
                                                      time.perf_counter() - started)
    started = time.perf_counter()
    ease = ease_scores(matrix, EASE_LAMBDA)
    results[f"EASE, lambda {EASE_LAMBDA:g} (closed form, numpy)"] = (dict(enumerate(top_rows(ease, seen, K))),
                                                                     time.perf_counter() - started)
    return {name: (evaluate.top_k_quality(tops, relevant, len(items), K), seconds)
            for name, (tops, seconds) in results.items()}


def main():
    p = _common.parser(__doc__)
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44], help="split seeds (42 43 44)")
    args = p.parse_args()
    from hfcf import training

    settings = dict(training.DEFAULTS)
    seeds = args.seeds[:1] if args.quick else args.seeds
    if args.quick:
        settings = {kind: dataclasses.replace(value, epochs=2) for kind, value in settings.items()}
    dataset = _common.movielens(args.data)
    runs = [one_seed(dataset, seed, settings) for seed in seeds]
    rows = []
    for name in runs[0]:
        quality = {metric: np.mean([run[name][0][metric] for run in runs]) for metric in METRICS}
        seconds = _common.median([run[name][1] for run in runs])
        spread = np.ptp([run[name][0][METRICS[0]] for run in runs])
        rows.append([name, *(f"{quality[metric]:.4f}" for metric in METRICS), f"{spread:.4f}", f"{seconds:.2f}"])
    rows.sort(key=lambda row: -float(row[1]))
    rows += [[name, f"{precision:.3f}", f"{ndcg:.3f}" if ndcg else "–", "–", "–", "–", "–", "–"]
             for name, precision, ndcg in PUBLISHED]
    print(_common.markdown_table(["method", *METRICS, "P@10 range over seeds", "fit s (median)"], rows))
    print()
    print(f"MovieLens 100k, {TRAIN_SHARE:.0%} of each user's ratings trained on, seeds {' '.join(map(str, seeds))}; "
          f"means over the seeds. hfcf: train.py's defaults: "
          + "; ".join(f"{kind} {_common.settings_line(value)}" for kind, value in settings.items()))
    print(_common.machine())
    if args.quick:
        print("--quick: one seed, two epochs per model: a smoke run, not a result.")


if __name__ == "__main__":
    _common.run(main)
