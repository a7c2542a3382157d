"""What to watch next: top-10 quality of hfcf's models beside popularity, EASE and implicit's ALS, on any data.

The protocol of Microsoft Recommenders' MovieLens 100k tables: for each user, shuffle their ratings (seed) and
keep the first 75% (rounded) for training, the rest as test. Every test title is relevant, whatever its rating.
Each method ranks every title the user did not rate in training and is scored on its top 10: precision@10,
NDCG@10 (binary gains), recall@10, catalogue coverage and the mean overlap of two users' lists, means over users
with test titles, then the mean over the seeds.

hfcf's rows are what a user gets: `hfcf.pipeline.train_and_save` with train.py's defaults (all models, the test
ratings as its held-out part), then `Recommender.from_pretrained(folder[, model=...])`, `attach_history(train)`
and `recommend(user, 10)` for every user. Peers (bench/peers.py): popularity, EASE (closed form) and implicit's ALS,
their settings chosen on an inner split of the training part (each user's training titles split 75/25 again).

    .venv/bin/python bench/ranking.py --data ../shared/data/ml-100k              # seeds 42 43 44, ~1 min
    .venv/bin/python bench/ranking.py --data ../shared/data/ml-100k --user-share 0.25 --seeds 42
    .venv/bin/python bench/ranking.py --synthetic taste:250000:15000x1000 --seeds 42
    .venv/bin/python bench/ranking.py --data ratings.txt --sep ' ' --seeds 42   # train.py's reading flags pass through
    .venv/bin/python bench/ranking.py --quick                                    # one seed, 2 epochs: a smoke run
"""
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np

import _common
import peers

K = 10
TRAIN_SHARE = 0.75
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


def one_seed(dataset, seed, settings, y_range):
    """{method: (quality dict, fit seconds, note)} on one split."""
    from hfcf import Recommender, evaluate, pipeline

    train, test = per_user_split(dataset.ratings, TRAIN_SHARE, seed)
    split = pipeline.Split(train, test, {"method": "per-user", "train_share": TRAIN_SHARE, "seed": seed})
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "model"
        config, _ = pipeline.train_and_save(dataset, split, out, settings=settings, y_range=y_range, seed=seed,
                                            log=_common.quiet)
        default = Recommender.from_pretrained(out).attach_history(train)  # what a user gets with no arguments
        models = {kind: default.sibling(kind) for kind in ("dot", "nn")}
    users, items = default.users, default.items
    relevant = relevant_rows(test, users, items)
    tested = [users.keys[row] for row in relevant]

    def recommended(recommender):
        return {users.index(user): items.rows(recommender.recommend(user, K)["title"]) for user in tested}

    fit = {kind: entry["fit_seconds"] for kind, entry in config["models"].items()}
    epochs = {kind: epochs_note(entry) for kind, entry in config["models"].items()}
    results = {f"hfcf default: `from_pretrained(folder)` ({default.model})":
               (recommended(default), fit[default.model], epochs[default.model])}
    for kind, model in models.items():
        results[f"hfcf {kind} (rating model) `recommend`"] = (recommended(model), fit[kind], epochs[kind])
    chosen = choices(train, users, items)
    inner_train, inner_test = per_user_split(train, TRAIN_SHARE, 0)
    inner_relevant = relevant_rows(inner_test, users, items)
    inner = (choices(inner_train, users, items), inner_relevant, np.array(list(inner_relevant)))
    results.update(peers.top_n_rows(chosen, np.array(list(relevant)), inner))
    return {name: (evaluate.top_k_quality(tops, relevant, len(items), K), seconds, note)
            for name, (tops, seconds, note) in results.items()}


def epochs_note(entry):
    """The epochs a model trained for and, where the data chose them, the inner figure they were chosen by."""
    how = entry.get("epochs_chosen")
    return f"{entry['epochs']} epochs" + (f" (inner {how['metric']} {how['figure']:.4f})" if how else "")


def choices(ratings, users, items):
    return peers.matrix(users.rows(ratings["user"]), items.rows(ratings["title"]), (len(users), len(items)))


def relevant_rows(test, users, items):
    """{user row: item rows held out}, for the users with held-out titles."""
    from hfcf import evaluate

    user_rows = users.rows(test["user"])
    return evaluate.group_by_user(user_rows, items.rows(test["title"]), np.unique(user_rows))


def main():
    p = _common.data_arguments(_common.parser(__doc__))
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44], help="split seeds (42 43 44)")
    args, reading = p.parse_known_args()
    from hfcf import kinds, pipeline

    dataset, y_range, described = _common.dataset(args, reading)
    seeds = args.seeds[:1] if args.quick else args.seeds
    probe, _ = per_user_split(dataset.ratings, TRAIN_SHARE, seeds[0])
    settings = kinds.defaults_for(*pipeline.training_size(pipeline.Split(probe, probe.iloc[:0], {})))
    if args.quick:
        settings = {kind: dataclasses.replace(value, epochs=2) for kind, value in settings.items()}
    runs = [one_seed(dataset, seed, settings, y_range) for seed in seeds]
    rows = []
    for name in runs[0]:
        quality = {metric: np.mean([run[name][0][metric] for run in runs]) for metric in METRICS}
        seconds = _common.median([run[name][1] for run in runs])
        spread = np.ptp([run[name][0][METRICS[0]] for run in runs])
        notes = "; ".join(dict.fromkeys(run[name][2] for run in runs if run[name][2]))
        rows.append([name, *(f"{quality[metric]:.4f}" for metric in METRICS), f"{spread:.4f}", f"{seconds:.2f}",
                     notes])
    rows.sort(key=lambda row: -float(row[1]))
    if dataset.name.startswith("MovieLens 100k") and args.user_share == 1:
        rows += [[name, f"{precision:.3f}", f"{ndcg:.3f}" if ndcg else "–", "–", "–", "–", "–", "–", ""]
                 for name, precision, ndcg in PUBLISHED]
    print(_common.markdown_table(["method", *METRICS, "P@10 range over seeds", "fit s (median)", "chosen"], rows))
    print()
    print(f"{described}; {TRAIN_SHARE:.0%} of each user's ratings trained on, seeds {' '.join(map(str, seeds))}; "
          f"means over the seeds. hfcf: train.py's defaults: "
          + "; ".join(f"{kind} {_common.settings_line(value)}" for kind, value in settings.items()))
    print(_common.machine())
    if args.quick:
        print("--quick: one seed, two epochs per model: a smoke run, not a result.")


if __name__ == "__main__":
    _common.run(main)
