"""Rating accuracy: hfcf's models beside Surprise and simple baselines, on MovieLens 100k's canonical splits u1..u5
or, for any other data, on the card's own split (a random 20% held out, seed 42).

On the canonical splits every method trains on u{k}.base and is scored on u{k}.test (read from the folder, or
derived from u.data as GroupLens's mku.sh does when the folder lacks them). hfcf's models use each kind's defaults (`hfcf.kinds.defaults_for`), the settings `python train.py` uses, and seed 42;
nothing is chosen per fold. Surprise (scikit-surprise) is an optional extra for this benchmark only: without it
its rows are skipped with a note. Published figures are quoted from the papers, not measured here.

    .venv/bin/python bench/accuracy.py --data ../shared/data/ml-100k
    .venv/bin/python bench/accuracy.py --synthetic taste:250000:15000x1000        # random split; planted model beside
    .venv/bin/python bench/accuracy.py --data ratings.csv --user-col uid          # train.py's reading flags pass through
    .venv/bin/python bench/accuracy.py --quick        # fold 1 only, one epoch each: a smoke run
"""
import dataclasses

import numpy as np

import _common
import peers
from _common import timed

# u1.test RMSE as the papers report it, for scale; never measured here.
PUBLISHED = [("GC-MC (Berg et al. 2017), published", 0.905), ("IGMC (Zhang & Chen 2020), published", 0.905),
             ("GLocal-K (Han et al. 2021), published", 0.889)]
SURPRISE_ALGORITHMS = ("BaselineOnly", "SVD", "SVDpp")


def hfcf_rows(split, settings, y_range):
    """{name: (scores, fit seconds)} for hfcf's baselines, both models and their average."""
    scores, fitted = _common.fit_and_score(split, settings, y_range=y_range)
    seconds = {kind: model.fit_seconds for kind, model in fitted.items()}
    seconds["ensemble"] = sum(seconds.values())
    names = {"global mean": "global mean (hfcf.evaluate)", "user+item bias": "user+item bias (hfcf.evaluate)",
             "dot": "hfcf dot (EmbeddingDotBias)", "nn": "hfcf nn (EmbeddingNN)", "ensemble": "hfcf ensemble (mean)"}
    return {names[name]: (value, seconds.get(name)) for name, value in scores.items()}


def surprise_rows(split, quick, rating_scale):
    """{name: (scores, fit seconds)} for Surprise's BaselineOnly, SVD and SVD++ with their default settings."""
    from hfcf import evaluate

    actual = split.valid["rating"].to_numpy()
    rows = peers.surprise_rows(split.train, split.valid, rating_scale, epochs=1 if quick else None)
    return {name: (evaluate.scores(predicted, actual), seconds) for name, (predicted, seconds) in rows.items()}


def main():
    p = _common.data_arguments(_common.parser(__doc__))
    p.add_argument("--folds", default="1,2,3,4,5", help="canonical folds to run, e.g. 1 or 1,2,3 (default: all)")
    p.add_argument("--split", default="auto", choices=["auto", "canonical", "random"],
                   help="auto: canonical for a MovieLens 100k folder, else random (the card's 20%%, seed 42)")
    p.add_argument("--no-surprise", action="store_true", help="skip Surprise even if it is installed")
    args, reading = p.parse_known_args()
    from hfcf import kinds, pipeline

    canonical = args.split == "canonical" or (args.split == "auto" and not (reading or args.synthetic)
                                              and args.user_share == 1)
    surprise_note = None
    if not args.no_surprise and not peers.installed("surprise"):
        surprise_note = "Surprise rows skipped: scikit-surprise is not installed (pip install scikit-surprise)."
    if canonical:
        folds = [1] if args.quick else [int(fold) for fold in args.folds.split(",")]
        splits = {fold: _common.canonical(args.data, fold) for fold in folds}
        y_range, described, truth = _common.Y_RANGE, "MovieLens 100k canonical splits", None
    else:
        dataset, y_range, described = _common.dataset(args, reading)
        folds, splits = [0], {0: pipeline.make_split(dataset, "random", 0.2, _common.SEED)}
        truth = (dataset.truth or {}).get("planted_rmse")
    settings = kinds.defaults_for(*pipeline.training_size(splits[folds[0]]))
    settings = {kind: settings[kind] for kind in ("dot", "nn")}
    if args.quick:
        settings = {kind: dataclasses.replace(value, epochs=1) for kind, value in settings.items()}
    results = {}  # name -> {fold: (scores, seconds)}
    for fold, split in splits.items():
        rows = hfcf_rows(split, settings, y_range)
        if not args.no_surprise and surprise_note is None:
            scale = (float(split.train["rating"].min()), float(split.train["rating"].max()))
            rows.update(surprise_rows(split, args.quick, scale))
        if truth is not None:
            rows["planted model (the noise floor)"] = ({"rmse": truth, "mae": float("nan")}, None)
        for name, value in rows.items():
            results.setdefault(name, {})[fold] = value
    print(table(results, folds))
    print()
    print(described + ("" if canonical else f"; a random 20% held out (seed {_common.SEED})"))
    for name, value in settings.items():
        print(f"hfcf {name}: {_common.settings_line(value)}")
    print(f"seed {_common.SEED}, y_range {y_range}; {_common.machine()}")
    if surprise_note:
        print(surprise_note)
    if args.quick:
        print("--quick: one fold or split, one epoch per model: a smoke run, not a result.")


def table(results, folds):
    """Markdown: per-fold RMSE, u1 MAE, means over the folds run, mean fit seconds per fold."""
    headers = ["method", *(f"u{fold} RMSE" if fold else "RMSE" for fold in folds)]
    if len(folds) > 1:
        headers += ["mean RMSE", "mean MAE"]
    else:
        headers += [f"u{folds[0]} MAE" if folds[0] else "MAE"]
    headers += ["fit s/fold"]
    rows = []
    for name, by_fold in results.items():
        rmses = [by_fold[fold][0]["rmse"] for fold in folds]
        maes = [by_fold[fold][0]["mae"] for fold in folds]
        seconds = [by_fold[fold][1] for fold in folds]
        cells = [name, *(f"{value:.4f}" for value in rmses)]
        cells += [f"**{np.mean(rmses):.4f}**", f"{np.mean(maes):.4f}"] if len(folds) > 1 else [f"{maes[0]:.4f}"]
        cells = [cell.replace("nan", "—") for cell in cells]
        cells.append("—" if name.startswith("planted") else "<0.1" if None in seconds else f"{np.mean(seconds):.1f}")
        rows.append(cells)
    if 1 in folds:
        for name, value in PUBLISHED:
            rows.append([name, *(f"{value:.3f}" if fold == 1 else "—" for fold in folds),
                         *(["—", "—"] if len(folds) > 1 else ["—"]), "—"])
    return _common.markdown_table(headers, rows)


if __name__ == "__main__":
    _common.run(main)
