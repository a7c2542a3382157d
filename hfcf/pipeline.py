"""Ratings -> split -> fastai fit -> evaluation -> model folder: the one path train.py and the app's bootstrap share."""
import platform
import re
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import __version__, artifacts, card, data, distributed, evaluate, kinds as registry, vocab

RANKING_USERS = 10_000  # top-k lists scored for at most this many users (a seeded sample beyond)
DEFAULT_Y_RANGE = (0.0, 5.5)  # the rating models' output range: MovieLens's 0.5 to 5 stars, with room at the top
# Implicit data has no rating scale; a top-N model weighs each chosen title by its rating on the folder's y_range,
# so (0, 1) makes every choice (rated data.IMPLICIT_RATING) weigh 1, in training and in fold-in alike.
IMPLICIT_Y_RANGE = (0.0, 1.0)


@dataclass
class Split:
    """Training and held-out ratings, and how they were chosen (for config.json and the card). Each side has the
    columns user, item, title and rating (a random split keeps only those, with a fresh index)."""

    train: pd.DataFrame
    valid: pd.DataFrame
    info: dict

    @property
    def description(self):
        if self.info["method"] == "all":
            return (f"Trained on all {len(self.train):,} ratings; nothing was held out, so this card reports no "
                    "held-out metrics (see BENCHMARKS.md for the same recipe measured on held-out data).")
        if self.info["method"] == "per-user":
            return (f"Each user's ratings shuffled (seed {self.info['seed']}), the first "
                    f"{self.info['train_share']:.0%} trained on ({len(self.train):,}), the rest held out "
                    f"({len(self.valid):,}).")
        if self.info["method"] == "canonical":
            return (f"MovieLens 100k canonical split u{self.info['fold']}: trained on u{self.info['fold']}.base "
                    f"({len(self.train):,} ratings), scored on u{self.info['fold']}.test ({len(self.valid):,}).")
        return (f"A random {self.info['valid_pct']:.0%} of the ratings held out (seed {self.info['seed']}): "
                f"trained on {len(self.train):,}, scored on {len(self.valid):,}.")


def make_split(dataset, method="random", valid_pct=0.2, seed=42, fold=1, folder=None):
    """Random row split, or MovieLens 100k's canonical u{fold}.base/u{fold}.test."""
    if method == "canonical":
        train, valid = data.canonical_split(folder, fold)
        return Split(train, valid, {"method": "canonical", "fold": fold})
    if method != "random":
        raise data.DataError(f"unknown --split {method!r}; use 'random' or 'canonical'")
    if valid_pct == 0:  # the model to publish: every rating trains it
        return Split(dataset.ratings, dataset.ratings.iloc[:0], {"method": "all", "valid_pct": 0.0, "seed": seed})
    if not 0 < valid_pct < 1:
        raise data.DataError(f"--valid-pct must be 0 (train on everything) or between 0 and 1 (got {valid_pct})")
    # Without the timestamps and the original row numbers, which nothing downstream reads: at 25M ratings they were
    # 400 MB of the split's 850 (with pandas 3's copy-on-write the column selection and new index copy nothing).
    train, valid = data.random_split(dataset.ratings[["user", "item", "title", "rating"]], valid_pct, seed)
    train, valid = train.reset_index(drop=True), valid.reset_index(drop=True)
    if valid.empty:
        raise data.DataError(f"--valid-pct {valid_pct} held out no rating: every drawn rating was the only one of "
                             "its user or title, so it stayed in training; use a smaller --valid-pct, or 0 to "
                             "train on everything")
    return Split(train, valid, {"method": "random", "valid_pct": valid_pct, "seed": seed})


def evaluate_models(fitted, split, users, items, y_range, implicit=False):
    """Held-out quality: ({name: RMSE/MAE} of the baselines, each rating model and (with two or more) their average,
    {name: top-k metrics} of popularity and every model); both empty when nothing was held out, the first when the
    data is `implicit` (every rating is 1: there is no error to measure)."""
    if split.valid.empty:
        return {}, {}
    train_users, train_items = users.rows(split.train["user"]), items.rows(split.train["title"])
    valid_users, valid_items = users.rows(split.valid["user"]), items.rows(split.valid["title"])
    scorers = {kind: registry.scorer(kind, model.state_dict, y_range) for kind, model in fitted.items()}
    errors = {} if implicit else _rating_errors(scorers, split, train_users, train_items, valid_users, valid_items,
                                                len(users), len(items), y_range)
    popularity = np.bincount(train_items, minlength=len(items)).astype(float)
    rankers = {"popularity": lambda rows: np.broadcast_to(popularity, (len(rows), len(items))),
               **{kind: scorer.scores_for for kind, scorer in scorers.items()}}
    ranked = evaluate.ranked_users(valid_users, RANKING_USERS)
    ranking = {name: evaluate.ranking(scores_for, train_users, train_items, valid_users, valid_items, len(items),
                                      card.RANKING_K, ranked) for name, scores_for in rankers.items()}
    return errors, ranking


def _rating_errors(scorers, split, train_users, train_items, valid_users, valid_items, n_users, n_items, y_range):
    """{name: RMSE/MAE} on the held-out ratings of the baselines, each rating model and (with two or more) their
    average."""
    actual = split.valid["rating"].to_numpy()
    predictions = {"global mean": evaluate.global_mean(split.train["rating"].to_numpy(), len(actual)),
                   "user+item bias": evaluate.bias_only(train_users, train_items, split.train["rating"].to_numpy(),
                                                        valid_users, valid_items, n_users, n_items, clip=y_range)}
    raters = [kind for kind in scorers if registry.KINDS[kind].predicts_ratings]
    for kind in raters:
        predictions[kind] = scorers[kind].predict(valid_users, valid_items)
    if len(raters) > 1:
        predictions["ensemble"] = sum(predictions[kind] for kind in raters) / len(raters)
    return {name: evaluate.scores(predicted, actual) for name, predicted in predictions.items()}


def training_size(split):
    """(ratings, users, titles) of the training split: what the default settings are chosen from (the vocabulary
    also holds the few titles seen only in validation; the nn's width rule does not need them)."""
    return len(split.train), split.train["user"].nunique(), split.train["title"].nunique()


def choice_kinds():
    """The kinds that learn from who chose what, not from ratings: what implicit data can train."""
    return tuple(name for name, kind in registry.KINDS.items() if not kind.predicts_ratings)


def model_kinds(dataset, kinds=None, y_range=None):
    """(kinds, y_range) to train on `dataset`: by default every model on DEFAULT_Y_RANGE, or for implicit data the
    models of choices alone on IMPLICIT_Y_RANGE; refuses rating models or a y_range asked for on implicit data."""
    if not dataset.implicit:
        return tuple(kinds or registry.KINDS), tuple(y_range or DEFAULT_Y_RANGE)
    asked = [kind for kind in kinds or () if registry.KINDS[kind].predicts_ratings]
    if asked:
        verb = "predicts" if len(asked) == 1 else "predict"
        alone = choice_kinds()
        labels = " and ".join(f"the {registry.KINDS[kind].label} model" for kind in alone)
        raise data.DataError(f"{' and '.join(asked)} {verb} ratings, and {dataset.name} has none (implicit data: who "
                             f"chose what); train {labels} alone: pass --models {','.join(alone)} (or leave out "
                             "--models)")
    if y_range is not None:
        raise data.DataError(f"--y-range is the range of the ratings, and {dataset.name} has none (implicit data: "
                             "every choice weighs 1); leave out --y-range")
    return choice_kinds(), IMPLICIT_Y_RANGE


def train_and_save(dataset, split, out, kinds=None, settings=None, y_range=None, seed=42,
                   force=False, repo_id=None, log=print, world=distributed.SINGLE, dataset_id=None):
    """Fit `kinds` on `split`, evaluate, and write the model folder at `out` atomically. Returns (the config, as
    written to config.json, and {kind: training.Fitted}, whose Learners parity checks use).

    `kinds` and `y_range` default as `model_kinds` says. Under torchrun every rank trains its share; rank 0 alone
    evaluates and writes (the others return (None, None)).
    """
    from . import training  # fastai is imported only when a model is actually trained

    given = kinds
    kinds, y_range = model_kinds(dataset, kinds, y_range)
    if world.is_main:
        artifacts.check_output(out, force)
    settings = settings or registry.defaults_for(*training_size(split))
    users, items = vocab.from_ratings(split.train, split.valid)
    distributed.check_same(world, "vocabularies", [users.keys, items.keys, len(split.train), len(split.valid)])
    log = log if world.is_main else (lambda *_: None)
    if dataset.implicit and given is None:
        labels = " and ".join(f"the {registry.KINDS[kind].label} model" for kind in kinds)
        log(f"{dataset.name} has no ratings: training {labels} only ({registry.rating_names()} predict ratings)")
    log(f"{dataset.name}: {len(users) - 1:,} users, {len(items) - 1:,} items; {split.description}"
        + (f" Data-parallel over {world.size} processes ({world.backend})." if world.distributed else ""))
    started = time.perf_counter()
    fitted = training.fit(kinds, settings, split.train, split.valid, users, items, y_range, seed, log, world)
    if not world.is_main:
        return None, None
    training.release_freed_memory()  # what the fits freed, before evaluation allocates its own
    metrics, ranking = evaluate_models(fitted, split, users, items, y_range, dataset.implicit)
    for name, value in metrics.items():
        log(f"{name:>15}: RMSE {value['rmse']:.4f}  MAE {value['mae']:.4f}")
    for name, value in ranking.items():
        log(f"{name:>15}: " + "  ".join(f"{metric} {number:.4f}" for metric, number in value.items()))
    ratings = dataset.ratings
    n_valid_users = int(split.valid["user"].nunique())
    config = {
        "library": "hfcf", "format_version": artifacts.FORMAT_VERSION, "hfcf_version": __version__,
        "fastai_version": training.fastai_version(), "python_version": platform.python_version(),
        "y_range": [float(y_range[0]), float(y_range[1])], "seed": seed,
        "models": {kind: {"architecture": registry.KINDS[kind].architecture, **model.settings,
                          "fit_seconds": model.fit_seconds,
                          **({"bytes_per_step": model.bytes_per_step} if world.distributed else {}),
                          **({"metrics": metrics[kind]} if kind in metrics else {}),
                          **({"ranking": ranking[kind]} if kind in ranking else {})}
                   for kind, model in fitted.items()},
        "dataset": {"id": re.sub(r"[^a-z0-9]+", "-", dataset.name.lower()).strip("-"), "hub_id": dataset_id,
                    "name": dataset.name, "implicit": dataset.implicit, "url": dataset.url, "licence": dataset.licence,
                    "citation": dataset.citation, "notes": list(dataset.notes), "n_ratings": len(ratings),
                    "n_users": int(ratings["user"].nunique()), "n_items": int(ratings["title"].nunique()),
                    "rating_range": [round(float(ratings["rating"].min()), 6),  # float32 noise off
                                     round(float(ratings["rating"].max()), 6)],
                    # how to read the same ratings again (the app's users' histories) and check they are the same
                    "read_as": dataset.read_as, "fingerprint": dataset.fingerprint or data.fingerprint(ratings)},
        "split": {**split.info, "description": split.description, "n_train": len(split.train),
                  "n_valid": len(split.valid), "n_valid_users": n_valid_users,
                  "ranked_users": min(n_valid_users, RANKING_USERS)},
        "metrics": metrics,
        "ranking": ranking,
        "train_seconds": round(time.perf_counter() - started, 2),
        "device": world.device,  # where training ran; the weights are saved from the CPU copy all the same
        "distributed": {"world_size": world.size, "backend": world.backend,
                        "batches": "each model's bs is the global batch; each process takes 1/world_size of it "
                                   "and gradients are averaged (DDP's all-reduce for dense parameters, the rows "
                                   "looked up gathered for lazy embeddings)"},
    }
    counts = sum(np.bincount(items.rows(side["title"]), minlength=len(items)) for side in (split.train, split.valid))
    item_counts = counts.tolist()
    artifacts.save(out, config, users, items, item_counts, {kind: model.state_dict for kind, model in fitted.items()},
                   card.render_card(config, repo_id, card.card_example(users.keys, items.keys, item_counts)))
    log(f"wrote {out} ({', '.join(sorted(registry.KINDS[k].weights_file for k in kinds))}, config.json, vocab.json, "
        "README.md)")
    return config, fitted
