"""Fit hfcf's models with fastai (top-N and the two chapter-8 rating models), evaluate them, write a model folder,
optionally push it.

    python train.py                                  # MovieLens 100k (downloaded via fastai) -> ./model
    python train.py --data ~/ml-latest-small --out models/small
    python train.py --push --repo-id you/movielens-cf   # token from HF_TOKEN or `hf auth login`
    python -m hfcf push ./model --repo-id you/movielens-cf   # publish a folder already trained
    python train.py --device cuda                    # on a GPU (auto: CUDA when there is one)
    torchrun --nproc_per_node=2 train.py --data ratings.csv     # data-parallel (gloo on CPUs, nccl on GPUs)

Exit status: 0 success, 2 bad input (nothing written), 1 internal or Hub failure, 130 interrupted.
"""
import argparse
import dataclasses
import os
import re
import shlex
import sys

from hfcf.errors import DataError, HfcfError, HubError
from hfcf.kinds import KINDS  # no torch: --help stays quick


def comma_list(cast):
    def parse(text):
        try:
            return tuple(cast(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {cast.__name__}s, got {text!r}") from None
    return parse


def parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    data = p.add_argument_group("data (default: MovieLens 100k through fastai's untar_data)")
    data.add_argument("--data", metavar="PATH", help="a MovieLens folder (100k, latest-small, 1M) or a CSV/TSV/Parquet "
                      "ratings file, on disk or in a Hub dataset repo as hf://datasets/OWNER/NAME[@REVISION]/PATH "
                      "(pinned to the commit it resolves to, cached; offline from the cache with HF_HUB_OFFLINE=1); "
                      "'synthetic' for a small generated set with planted clusters")
    data.add_argument("--format", default="auto", choices=["auto", "ml-100k", "ml-latest-small", "ml-1m", "table",
                                                           "matrix", "synthetic"],
                      help="how to read --data (default: detect); matrix: one row per user, one column per item")
    data.add_argument("--sep", help="a text file's field separator: one character, or tab, comma, semicolon, pipe, "
                      "whitespace (default: detected from its first lines)")
    data.add_argument("--header", action=argparse.BooleanOptionalAction, default=None,
                      help="whether a text file's first row names its columns (default: detected)")
    data.add_argument("--columns", metavar="NAME,NAME,...", help="a text file's column names in order, e.g. "
                      "user,item,rating,timestamp (default: its header; without one, user,item,rating,timestamp)")
    data.add_argument("--missing", metavar="VALUE", help="--format matrix: the cell value meaning 'not rated', "
                      "e.g. 99 (empty cells always are)")
    data.add_argument("--user-col", help="ratings-file column of user ids (default: user)")
    data.add_argument("--item-col", help="ratings-file column of item ids (default: item)")
    data.add_argument("--rating-col", help="ratings-file column of ratings (default: rating); 'none' for data "
                      "without ratings (plays, purchases: who chose what), as a file of only user and item columns is")
    data.add_argument("--timestamp-col", help="ratings-file column of timestamps (optional)")
    data.add_argument("--titles", metavar="PATH", help="a CSV/Parquet table of item titles for a ratings file "
                      "(a path or an hf://datasets/... URL)")
    data.add_argument("--title-col", help="column of titles in --titles (default: title)")
    data.add_argument("--titles-item-col", help="column of item ids in --titles (default: --item-col)")
    data.add_argument("--dataset-id", metavar="OWNER/NAME", help="the Hub dataset repo the ratings come from, "
                      "for the card's `datasets:` (default: the repo of an hf://datasets/... --data; left out for "
                      "a local file: a file name is no dataset id)")
    data.add_argument("--on-duplicate", default="error", choices=["error", "last", "mean"],
                      help="a user rating the same item twice: refuse (default), keep the last, or average")
    split = p.add_argument_group("evaluation split")
    split.add_argument("--split", default="random", choices=["random", "canonical"],
                       help="random: hold out --valid-pct of ratings; canonical: MovieLens 100k u{fold}.base/.test")
    split.add_argument("--valid-pct", type=float, default=0.2,
                       help="held-out fraction for --split random (0.2); 0 trains on every rating (the model to "
                       "publish) and reports no held-out metrics")
    split.add_argument("--fold", type=int, default=1, help="canonical fold 1-5 (default 1)")
    choosers = [name for name, kind in KINDS.items() if not kind.predicts_ratings]
    raters = [name for name, kind in KINDS.items() if kind.predicts_ratings]
    model = p.add_argument_group(
        "models (defaults differ per model: each kind's `small` settings in hfcf/kinds/, tuned on MovieLens 100k, "
        "see BENCHMARKS.md; a flag given here applies to every model that has the setting)")
    model.add_argument("--models", type=comma_list(str),
                       help=f"comma-separated, from {', '.join(KINDS)} (default: all; {' and '.join(choosers)} alone "
                       f"for data without ratings): {' and '.join(choosers)} ranks what to watch next, "
                       f"{' and '.join(raters)} predict ratings")
    model.add_argument("--epochs", type=int, help="epochs of fit_one_cycle (default: chosen by the data on a held-out share of the training data)")
    model.add_argument("--factors", type=int, help=f"{' and '.join(having('n_factors'))} models: latent factors")
    model.add_argument("--layers", type=comma_list(int),
                       help=f"{' and '.join(having('layers'))} model: hidden layer sizes, e.g. 100,50")
    model.add_argument("--bs", type=int, help="batch size")
    model.add_argument("--lr", type=float, help="peak learning rate of the one-cycle schedule")
    model.add_argument("--wd", type=float, help="weight decay")
    first = next(iter(KINDS))
    model.add_argument("--set", type=per_model, action="append", metavar="MODEL.SETTING=VALUE",
                       help=f"one model's setting, after the flags above, e.g. --set {first}.epochs=20 (settings: "
                       f"{'; '.join(f'{name}: ' + ', '.join(kind.Settings.names()) for name, kind in KINDS.items())}"
                       "); batches, learning rates and penalties follow the data's size smoothly, and the epochs are "
                       "chosen on a held-out tenth of the training data; the card records what each model used")
    model.add_argument("--y-range", type=comma_list(float),
                       help="low,high of the sigmoid output; every rating must lie inside (default 0,5.5)")
    model.add_argument("--seed", type=int, default=42, help="seed of the split, initialisation and shuffling (42)")
    model.add_argument("--device", default="auto", help="where to train: auto (CUDA when there is a GPU, else the "
                       "CPU), cpu, cuda, cuda:N or mps; under torchrun on CUDA each process takes the GPU of its "
                       "LOCAL_RANK (default auto)")
    output = p.add_argument_group("output")
    output.add_argument("--out", default="model", type=os.path.expanduser,
                        help="model folder to write (default: ./model); a symlink is written through")
    output.add_argument("--force", action="store_true",
                        help="write into --out even if it is not an hfcf model folder (its other files are kept)")
    output.add_argument("--push", action="store_true", help="publish the folder to the Hub in one commit")
    output.add_argument("--repo-id", help="Hub repo to push to, e.g. you/movielens-cf")
    output.add_argument("--private", action="store_true", help="create the Hub repo as private")
    return p


def having(setting):
    """The kinds whose settings include `setting`."""
    return [name for name, kind in KINDS.items() if setting in kind.Settings.names()]


def flag(text):
    """`true`/`false` (or 1/0, yes/no) for a boolean setting: `bool("false")` would be True."""
    words = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    if text.strip().lower() not in words:
        raise ValueError(text)
    return words[text.strip().lower()]


def per_model(text):
    """`--set MODEL.epochs=20` -> (MODEL, "epochs", "20"), refusing a model or setting that does not exist."""
    kind, dot, rest = text.partition(".")
    key, equals, value = rest.partition("=")
    names = KINDS[kind].Settings.names() if kind in KINDS else ()
    if not (dot and equals and value.strip()) or kind not in KINDS or key not in names:
        settings = ", ".join(names) if names else "its settings (see --help)"
        raise argparse.ArgumentTypeError(f"expected MODEL.SETTING=VALUE with MODEL one of {', '.join(KINDS)} and "
                                         f"SETTING one of {settings} (got {text!r})")
    return kind, key, value.strip()


def model_settings(args, n_train, n_users=None, n_items=None):
    """Each model's defaults for `n_train` ratings, then the flags given for every model that has the setting, then
    `--set`'s; each model's settings are checked once, with all of them in."""
    from hfcf import kinds

    given = {"epochs": args.epochs, "n_factors": args.factors, "layers": args.layers, "bs": args.bs,
             "lr": args.lr, "wd": args.wd}
    defaults = kinds.defaults_for(n_train, n_users, n_items)
    changes = {kind: {key: value for key, value in given.items() if value is not None and kind in having(key)}
               for kind in defaults}
    for kind, key, text in args.set or ():
        current = changes[kind].get(key, getattr(defaults[kind], key))
        try:
            changes[kind][key] = comma_list(int)(text) if isinstance(current, tuple) else \
                flag(text) if isinstance(current, bool) else type(current)(text)
        except (ValueError, argparse.ArgumentTypeError):
            raise DataError(f"--set {kind}.{key}={text}: expected a value like the default, {current!r}") from None
    return {kind: dataclasses.replace(settings, **changes[kind]) for kind, settings in defaults.items()}


def table_columns(args):
    """The ratings-file flags the user gave (the loader refuses them for MovieLens folders)."""
    given = {"user_col": args.user_col, "item_col": args.item_col, "rating_col": args.rating_col,
             "timestamp_col": args.timestamp_col, "titles_path": args.titles, "title_col": args.title_col,
             "titles_item_col": args.titles_item_col, "sep": args.sep, "header": args.header, "columns": args.columns,
             "missing": args.missing}
    return {key: value for key, value in given.items() if value is not None}


def check_args(args):
    """Refuse bad flag combinations before loading data or training."""
    models = args.models
    if args.epochs is not None and args.epochs < 1:  # 0 is how settings say "chosen by the data": leave out --epochs
        raise DataError(f"--epochs must be at least 1 (got {args.epochs}); leave it out to have the data choose")
    if models is not None and (set(models) - set(KINDS) or not models or len(set(models)) != len(models)):
        raise DataError(f"--models takes one or more of {','.join(KINDS)}, each once (got {','.join(models)})")
    if args.y_range is not None and (len(args.y_range) != 2 or not args.y_range[0] < args.y_range[1]):
        raise DataError(f"--y-range needs low,high with low < high (got {args.y_range})")
    if not 0 <= args.seed < 2 ** 32:  # what numpy's global seed takes
        raise DataError(f"--seed must be a whole number from 0 to {2 ** 32 - 1} (got {args.seed})")
    if args.push:
        from hfcf import hub
        hub.check_can_push(args.repo_id, args.private)


def negative_values_attached(argv):
    """argv with `--y-range -1,5` written `--y-range=-1,5`: argparse takes a value that starts with "-" for an
    option unless it is a single number."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for position in range(len(argv) - 1, 0, -1):
        if argv[position - 1] == "--y-range" and re.fullmatch(r"-[\d.].*", argv[position]):
            argv[position - 1:position + 1] = [f"--y-range={argv[position]}"]
    return argv


def main(argv=None):
    args = parser().parse_args(negative_values_attached(argv))
    trained, world = False, None
    try:
        check_args(args)
        from hfcf import artifacts, data, distributed, hub, pipeline

        world = distributed.join(args.device)  # torchrun's variables: one process of several, else a single one
        if world.is_main:
            artifacts.check_output(args.out, args.force)
        dataset = data.load(args.data, format=args.format, on_duplicate=args.on_duplicate,
                            y_range=args.y_range or pipeline.DEFAULT_Y_RANGE, **table_columns(args))
        if dataset.reading is not None and world.is_main:
            print(f"read {dataset.name}: {dataset.reading.describe()}")
        split = pipeline.make_split(dataset, args.split, args.valid_pct, args.seed, args.fold, args.data)
        settings = model_settings(args, *pipeline.training_size(split))
        pipeline.train_and_save(dataset, split, args.out, args.models, settings, args.y_range, args.seed,
                                args.force, args.repo_id, world=world,
                                dataset_id=args.dataset_id or hub.dataset_repo_id(args.data))
        trained = True
        if args.push and world.is_main:
            result = hub.push(args.out, args.repo_id, private=args.private)
            print(f"pushed commit {result.commit_sha} to {result.repo_url}\n{result.url}")
        distributed.barrier(world)  # the other ranks wait until rank 0 has written (and pushed) the folder
    except DataError as err:
        print(f"error{_where(world)}: {err}", file=sys.stderr)
        return 2
    except HubError as err:
        again = ""
        if trained:  # the folder is complete: it can be published without training again
            command = ["python -m hfcf push", shlex.quote(args.out), "--repo-id", shlex.quote(args.repo_id)]
            again = (f"\nthe model folder {args.out} was written; once that is fixed, publish it without "
                     f"retraining: {' '.join(command + (['--private'] if args.private else []))}")
        print(f"error{_where(world)}: {err}{again}", file=sys.stderr)
        return 1
    except HfcfError as err:
        print(f"error{_where(world)}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted{_where(world)}: {args.out} was left as it was", file=sys.stderr)
        return 130
    finally:
        if world is not None:
            from hfcf import distributed
            distributed.leave(world)
    return 0


def _where(world):
    """" on rank R of N" under torchrun, so a message says which process failed."""
    return f" on {world.describe()}" if world is not None and world.distributed else ""


if __name__ == "__main__":
    sys.exit(main())
