"""How the top-N model's defaults were chosen: a grid searched on held-out data that bench/ranking.py never scores.

The training part of ranking.py's split (seed 42, 75% of each user's ratings) is split again the same way
(seed 0): the grid trains on the inner 75% and is scored on the inner 25% with precision@10 and NDCG@10. The
settings picked here are `hfcf.kinds.topn.TopN.base`; bench/ranking.py then scores them on the outer test.

    .venv/bin/python bench/topn_search.py --data ../shared/data/ml-100k     # ~3 min
    .venv/bin/python bench/topn_search.py --quick                            # three settings, a smoke run
"""
import dataclasses
import itertools

import numpy as np

import _common
from ranking import TRAIN_SHARE, per_user_split

GRID = {"wd": (5.0, 10.0, 20.0), "lr": (1e-3, 3e-3, 1e-2), "n_factors": (128, 256)}


def main():
    p = _common.parser(__doc__)
    args = p.parse_args()
    from hfcf import evaluate, training, vocab
    from hfcf.kinds import KINDS, scorer as make_scorer

    dataset = _common.movielens(args.data)
    outer_train, _ = per_user_split(dataset.ratings, TRAIN_SHARE, 42)
    train, valid = per_user_split(outer_train, TRAIN_SHARE, 0)
    users, items = vocab.from_ratings(outer_train)
    train_users, train_items = users.rows(train["user"]), items.rows(train["title"])
    valid_users, valid_items = users.rows(valid["user"]), items.rows(valid["title"])
    default = KINDS["topn"].base
    grid = [dict(zip(GRID, values)) for values in itertools.product(*GRID.values())]
    if args.quick:
        grid = [{"wd": 10.0, "lr": lr, "n_factors": 128} for lr in GRID["lr"]]
    rows = []
    for change in grid:
        settings = dataclasses.replace(default, **change)
        fitted = training.fit(["topn"], {"topn": settings}, train, valid, users, items, _common.Y_RANGE,
                              _common.SEED, log=_common.quiet)["topn"]
        scorer = make_scorer("topn", fitted.state_dict, _common.Y_RANGE)
        quality = evaluate.ranking(scorer.scores_for, train_users, train_items, valid_users, valid_items,
                                   len(items), 10)
        rows.append([change["wd"], change["lr"], change["n_factors"], quality["precision@10"], quality["ndcg@10"],
                     fitted.fit_seconds])
    rows.sort(key=lambda row: -row[3])
    chosen = (default.wd, default.lr, default.n_factors)
    print(_common.markdown_table(
        ["wd (lambda)", "lr", "factors", "inner precision@10", "inner NDCG@10", "fit s"],
        [[*(f"**{v}**" if tuple(row[:3]) == chosen else v for v in row[:3]), f"{row[3]:.4f}", f"{row[4]:.4f}",
          f"{row[5]:.1f}"] for row in rows]))
    print()
    print(f"Inner split of MovieLens 100k's seed-42 training part: {len(train):,} ratings trained on, {len(valid):,} "
          f"held out. Fixed: {_common.settings_line(default)} (bold: the defaults).")
    print(_common.machine())
    best = rows[0]
    print(f"best here: wd {best[0]}, lr {best[1]}, {best[2]} factors; the defaults score "
          f"{next(r[3] for r in rows if tuple(r[:3]) == chosen) if chosen in [tuple(r[:3]) for r in rows] else np.nan:.4f}")


if __name__ == "__main__":
    _common.run(main)
