"""Training speed: the book's recipe, hfcf's defaults and a bare torch loop, fitted in one process, alternating.

All fits use the same data and split (MovieLens 100k, a random 20% held out with seed 42, as `python train.py`
does) and one thread. Each repetition runs every fit once, in reverse order on odd repetitions so that a drift
in the machine's speed does not favour one; the table gives medians. Ratios are of medians from this one run.

- book: chapter 8 as printed: `CollabDataLoaders` (fastai's tabular DataLoader), bs=64,
  `collab_learner(dls, n_factors=50, y_range=(0, 5.5))` or `use_nn=True, layers=[100, 50]`,
  `fit_one_cycle(5, 5e-3, wd=0.1)`.
- hfcf: `hfcf.training.fit_one` with each kind's default settings (hfcf/kinds/) for `--epochs` (the count train.py
  chooses on this split), from random weights: fastai's Learner, fit_one_cycle, lazy Adam, Recorder and the rmse
  metric, fed pre-encoded tensors.
- bare torch: the same fastai modules, batches, schedule and optimiser settings as hfcf, in a plain loop
  (torch AdamW + OneCycleLR, a validation pass each epoch): the floor for fastai's framework overhead.
- train.py: `python train.py` in a subprocess, imports, data loading, both fits, evaluation and writing included.

    .venv/bin/python bench/speed.py --data ../shared/data/ml-100k
    .venv/bin/python bench/speed.py --quick           # one repetition of one epoch each: a smoke run
"""
import dataclasses
import math
import os
import subprocess
import sys
import tempfile
import warnings

import torch
import torch.nn.functional as F

import _common
from _common import median, timed

BOOK = {"bs": 64, "epochs": 5, "lr": 5e-3, "wd": 0.1, "n_factors": 50, "layers": [100, 50]}


def book_fit(kind, split, epochs):
    """The book's recipe on `split`; returns (fit seconds, held-out RMSE)."""
    import pandas as pd
    from fastai.callback.progress import ProgressCallback
    from fastai.collab import TabularCollab, collab_learner
    from fastai.data.block import TransformBlock
    from fastai.tabular.core import Categorify
    from fastai.torch_core import set_seed

    warnings.filterwarnings("ignore", "The given NumPy array is not writable")  # fastai's tabular, harmless here
    set_seed(_common.SEED, reproducible=True)
    # CollabDataLoaders.from_df with the split given instead of drawn, so that every fit sees the same rows.
    ratings = pd.concat([split.train, split.valid], ignore_index=True)[["user", "title", "rating"]]
    splits = (list(range(len(split.train))), list(range(len(split.train), len(ratings))))
    to = TabularCollab(ratings, [Categorify], ["user", "title"], y_names=["rating"], y_block=TransformBlock(),
                       splits=splits)
    dls = to.dataloaders(bs=BOOK["bs"])
    if kind == "dot":
        learn = collab_learner(dls, n_factors=BOOK["n_factors"], y_range=_common.Y_RANGE)
    else:
        learn = collab_learner(dls, use_nn=True, y_range=_common.Y_RANGE, layers=BOOK["layers"])
    if not sys.stderr.isatty():  # as hfcf.training does: same logging cost on both sides
        learn.remove_cb(ProgressCallback)
        learn.logger = _common.quiet
    _, seconds = timed(learn.fit_one_cycle, epochs, BOOK["lr"], wd=BOOK["wd"])
    return seconds, math.sqrt(learn.recorder.values[-1][1])


def hfcf_fit(kind, split, settings, tensors, vocabularies):
    """hfcf's fastai fit; returns (fit seconds, held-out RMSE)."""
    from hfcf import training

    users, items = vocabularies
    fitted, seconds = timed(training.fit_one, kind, settings, *tensors, users, items, _common.Y_RANGE,
                            _common.SEED, log=_common.quiet)
    return seconds, math.sqrt(fitted.history[-1][1])


def bare_fit(kind, settings, tensors, vocabularies):
    """hfcf's model, batches and one-cycle Adam in a plain torch loop; returns (fit seconds, held-out RMSE)."""
    from fastai.collab import EmbeddingDotBias, EmbeddingNN
    from fastai.tabular.model import tabular_config
    from fastai.torch_core import norm_bias_params, set_seed

    from hfcf import training
    from hfcf.kinds import KINDS

    (train_x, train_y), (valid_x, valid_y) = tensors
    users, items = vocabularies
    chosen = KINDS[kind].resolved(settings, users, items)
    set_seed(_common.SEED, reproducible=True)
    if kind == "dot":
        model = EmbeddingDotBias(settings.n_factors, len(users), len(items), y_range=_common.Y_RANGE)
        spared = [model.u_bias.weight, model.i_bias.weight]  # as hfcf.training: biases are not decayed
    else:
        model = EmbeddingNN([(len(users), chosen["user_size"]), (len(items), chosen["item_size"])],
                            list(settings.layers), **tabular_config(bn_cont=False, use_bn=settings.batchnorm,
                                                                    embed_p=settings.embed_p, y_range=_common.Y_RANGE))
        training.fast_dropout(model)  # as hfcf.training does
        spared = list(norm_bias_params(model))  # fastai's wd_bn_bias=False
        if not settings.batchnorm:  # as hfcf's nn: the L2 on the embeddings only
            spared += [p for layer in model.layers.modules() if isinstance(layer, torch.nn.Linear)
                       for p in layer.parameters()]
    decayed = [p for p in model.parameters() if all(p is not q for q in spared)]
    optimizer = torch.optim.AdamW([{"params": decayed}, {"params": spared, "weight_decay": 0.0}], lr=settings.lr,
                                  betas=(0.95, settings.sqr_mom), eps=1e-5, weight_decay=settings.wd)
    batches = training.TensorBatches(train_x, train_y, settings.bs, shuffle=True, seed=_common.SEED)
    # fastai's fit_one_cycle: cosine warm-up over 25% of steps from lr/25, cosine down to lr/1e5, moms 0.95-0.85.
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, settings.lr, total_steps=settings.epochs * len(batches), pct_start=0.25, div_factor=25.0,
        final_div_factor=1e5 / 25, base_momentum=0.85, max_momentum=0.95)

    def fit():
        for _ in range(settings.epochs):
            model.train()
            for x, y in batches:
                loss = F.mse_loss(model(x).view(-1), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
            model.eval()
            with torch.no_grad():
                squared = sum(((model(valid_x[i:i + 8192]).view(-1) - valid_y[i:i + 8192]) ** 2).sum().item()
                              for i in range(0, len(valid_x), 8192))
        return math.sqrt(squared / len(valid_x))

    rmse, seconds = timed(fit)
    return seconds, rmse


def train_py(data_path, epochs):
    """`python train.py` end to end in a subprocess; returns (wall seconds, None)."""
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, str(_common.ROOT / "train.py"), "--out", os.path.join(folder, "model")]
        if data_path:
            command += ["--data", str(data_path)]
        if epochs is not None:
            command += ["--epochs", str(epochs)]
        result, seconds = timed(subprocess.run, command, cwd=_common.ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"train.py failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return seconds, None


def main():
    p = _common.parser(__doc__)
    p.add_argument("--repeats", type=int, default=3, help="repetitions of every fit (default 3; medians reported)")
    p.add_argument("--no-train-py", action="store_true", help="skip timing `python train.py` end to end")
    p.add_argument("--epochs", type=int, default=8,
                   help="epochs of each hfcf and bare fit (default 8: what train.py chooses for both on this split)")
    args = p.parse_args()
    from hfcf import pipeline, training
    from hfcf.kinds import KINDS

    repeats = 1 if args.quick else args.repeats
    epochs, book_epochs = (1, 1) if args.quick else (args.epochs, BOOK["epochs"])
    settings = {kind: dataclasses.replace(KINDS[kind].base, epochs=epochs) for kind in KINDS}
    dataset = _common.movielens(args.data)
    split = pipeline.make_split(dataset, "random", 0.2, _common.SEED)
    vocabularies = _common.vocabularies(split)
    tensors = (training.encode(split.train, *vocabularies), training.encode(split.valid, *vocabularies))
    fits = {}
    for kind in ("dot", "nn"):
        fits[f"book {kind}"] = (book_epochs, BOOK["bs"], lambda k=kind: book_fit(k, split, book_epochs))
    for kind in ("dot", "nn"):
        s = settings[kind]
        fits[f"hfcf {kind}"] = (s.epochs, s.bs, lambda k=kind: hfcf_fit(k, split, settings[k], tensors, vocabularies))
    for kind in ("dot", "nn"):
        s = settings[kind]
        fits[f"bare torch {kind}"] = (s.epochs, s.bs, lambda k=kind: bare_fit(k, settings[k], tensors, vocabularies))
    if not args.no_train_py:
        fits["python train.py"] = (None, None, lambda: train_py(args.data, 1 if args.quick else None))
    results = {name: [] for name in fits}
    for repeat in range(repeats):
        for name in (list(fits) if repeat % 2 == 0 else list(fits)[::-1]):
            results[name].append(fits[name][2]())
    print(table(fits, results))
    print()
    for kind, value in settings.items():
        print(f"hfcf {kind}: {_common.settings_line(value)}")
    print(f"{repeats} repetition{'s' * (repeats > 1)}, medians; one process; {_common.machine()}")
    if args.quick:
        print("--quick: one repetition of one epoch each: a smoke run, not a result.")


def table(fits, results):
    """Markdown: fit seconds, seconds per epoch, RMSE, and the ratios the targets are about."""
    seconds = {name: median([s for s, _ in runs]) for name, runs in results.items()}
    rmse = {name: median([r for _, r in runs if r is not None]) for name, runs in results.items()}
    rows = []
    for name, (epochs, bs, _) in fits.items():
        if epochs is None:
            continue
        kind = name.split()[-1]
        ratio = ""
        if name.startswith("hfcf"):
            ratio = f"{seconds[f'book {kind}'] / seconds[name]:.1f}x faster than book; " \
                    f"{seconds[name] / seconds[f'bare torch {kind}']:.2f}x bare torch"
        rows.append([name, bs, epochs, f"{seconds[name]:.2f}", f"{seconds[name] / epochs * 1000:.0f}",
                     f"{rmse[name]:.4f}", ratio])
    book, hfcf = seconds["book dot"] + seconds["book nn"], seconds["hfcf dot"] + seconds["hfcf nn"]
    rows.append(["both models, book → hfcf", "", "", f"{book:.2f} → {hfcf:.2f}", "", "",
                 f"**{book / hfcf:.1f}x faster**"])
    if "python train.py" in results:
        rows.append(["`python train.py` end to end", "", "", f"{seconds['python train.py']:.2f}", "", "",
                     "imports, data, both fits, evaluation, model folder"])
    return _common.markdown_table(["fit", "bs", "epochs", "fit s (median)", "ms/epoch", "held-out RMSE", "ratio"],
                                  rows)


if __name__ == "__main__":
    _common.run(main)
