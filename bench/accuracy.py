"""Rating accuracy on MovieLens 100k's canonical splits u1..u5: hfcf's models beside Surprise and simple baselines.

Every method trains on u{k}.base and is scored on u{k}.test (read from the folder, or derived from u.data as
GroupLens's mku.sh does when the folder lacks them). hfcf's models use `hfcf.training.DEFAULTS`, the settings `python train.py` uses, and seed 42;
nothing is chosen per fold. Surprise (scikit-surprise) is an optional extra for this benchmark only: without it
its rows are skipped with a note. Published figures are quoted from the papers, not measured here.

    .venv/bin/python bench/accuracy.py --data ../shared/data/ml-100k
    .venv/bin/python bench/accuracy.py --quick        # fold 1 only, one epoch each: a smoke run
"""
import dataclasses

import numpy as np

import _common
from _common import timed

# u1.test RMSE as the papers report it, for scale; never measured here.
PUBLISHED = [("GC-MC (Berg et al. 2017), published", 0.905), ("IGMC (Zhang & Chen 2020), published", 0.905),
             ("GLocal-K (Han et al. 2021), published", 0.889)]
SURPRISE_ALGORITHMS = ("BaselineOnly", "SVD", "SVDpp")


def hfcf_rows(split, settings):
    """{name: (scores, fit seconds)} for hfcf's baselines, both models and their average."""
    scores, fitted = _common.fit_and_score(split, settings)
    seconds = {kind: model.fit_seconds for kind, model in fitted.items()}
    seconds["ensemble"] = sum(seconds.values())
    names = {"global mean": "global mean (hfcf.evaluate)", "user+item bias": "user+item bias (hfcf.evaluate)",
             "dot": "hfcf dot (EmbeddingDotBias)", "nn": "hfcf nn (EmbeddingNN)", "ensemble": "hfcf ensemble (mean)"}
    return {names[name]: (value, seconds.get(name)) for name, value in scores.items()}


def surprise_rows(split, quick):
    """{name: (scores, fit seconds)} for Surprise's BaselineOnly, SVD and SVD++ with their default settings."""
    import surprise

    from hfcf import evaluate

    reader = surprise.Reader(rating_scale=(1, 5))
    trainset = surprise.Dataset.load_from_df(split.train[["user", "item", "rating"]], reader).build_full_trainset()
    epochs = {"n_epochs": 1} if quick else {}
    algorithms = {"BaselineOnly": surprise.BaselineOnly(bsl_options=epochs, verbose=False),
                  "SVD": surprise.SVD(random_state=0, **epochs), "SVDpp": surprise.SVDpp(random_state=0, **epochs)}
    actual = split.valid["rating"].to_numpy()
    rows = {}
    for name, algorithm in algorithms.items():
        _, seconds = timed(algorithm.fit, trainset)
        predicted = np.array([algorithm.predict(user, item).est
                              for user, item in zip(split.valid["user"], split.valid["item"])])
        rows[f"Surprise {name} (defaults)"] = (evaluate.scores(predicted, actual), seconds)
    return rows


def main():
    p = _common.parser(__doc__)
    p.add_argument("--folds", default="1,2,3,4,5", help="canonical folds to run, e.g. 1 or 1,2,3 (default: all)")
    p.add_argument("--no-surprise", action="store_true", help="skip Surprise even if it is installed")
    args = p.parse_args()
    from hfcf import training

    folds = [1] if args.quick else [int(fold) for fold in args.folds.split(",")]
    settings = dict(training.DEFAULTS)
    if args.quick:
        settings = {kind: dataclasses.replace(value, epochs=1) for kind, value in settings.items()}
    surprise_note = None
    if not args.no_surprise:
        try:
            import surprise  # noqa: F401
        except ImportError:
            surprise_note = "Surprise rows skipped: scikit-surprise is not installed (pip install scikit-surprise)."
    results = {}  # name -> {fold: (scores, seconds)}
    for fold in folds:
        split = _common.canonical(args.data, fold)
        rows = hfcf_rows(split, settings)
        if not args.no_surprise and surprise_note is None:
            rows.update(surprise_rows(split, args.quick))
        for name, value in rows.items():
            results.setdefault(name, {})[fold] = value
    print(table(results, folds))
    print()
    for name, value in settings.items():
        print(f"hfcf {name}: {_common.settings_line(value)}")
    print(f"seed {_common.SEED}, y_range {_common.Y_RANGE}; {_common.machine()}")
    if surprise_note:
        print(surprise_note)
    if args.quick:
        print("--quick: fold 1 only, one epoch per model: a smoke run, not a result.")


def table(results, folds):
    """Markdown: per-fold RMSE, u1 MAE, means over the folds run, mean fit seconds per fold."""
    headers = ["method", *(f"u{fold} RMSE" for fold in folds)]
    if len(folds) > 1:
        headers += ["mean RMSE", "mean MAE"]
    else:
        headers += [f"u{folds[0]} MAE"]
    headers += ["fit s/fold"]
    rows = []
    for name, by_fold in results.items():
        rmses = [by_fold[fold][0]["rmse"] for fold in folds]
        maes = [by_fold[fold][0]["mae"] for fold in folds]
        seconds = [by_fold[fold][1] for fold in folds]
        cells = [name, *(f"{value:.4f}" for value in rmses)]
        cells += [f"**{np.mean(rmses):.4f}**", f"{np.mean(maes):.4f}"] if len(folds) > 1 else [f"{maes[0]:.4f}"]
        cells.append("<0.1" if None in seconds else f"{np.mean(seconds):.1f}")
        rows.append(cells)
    if 1 in folds:
        for name, value in PUBLISHED:
            rows.append([name, *(f"{value:.3f}" if fold == 1 else "—" for fold in folds),
                         *(["—", "—"] if len(folds) > 1 else ["—"]), "—"])
    return _common.markdown_table(headers, rows)


if __name__ == "__main__":
    _common.run(main)
