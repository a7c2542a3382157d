"""Recommender latency on a MovieLens 100k model: median and p95 per call, one thread, for each model.

`recommend` on the top-N model includes the reasons ("because") and the dot model's predicted ratings.

    .venv/bin/python bench/latency.py --model /tmp/ml100k-model     # a folder written by train.py
    .venv/bin/python bench/latency.py --data ../shared/data/ml-100k  # trains one first (needs fastai)
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")  # steadier on 2 shared cores, and what the app runs with
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hfcf import Recommender, data  # noqa: E402


def timings(call, repeats, warmup=3):
    """Seconds per call, each call timed on its own."""
    for _ in range(warmup):
        call()
    spent = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        spent.append(time.perf_counter() - start)
    return spent


def fmt(seconds):
    return f"{seconds * 1e6:,.0f} µs" if seconds < 1e-3 else f"{seconds * 1e3:,.1f} ms"


def model_folder(args):
    if args.model:
        return Path(args.model)
    from hfcf import pipeline

    dataset = data.load(args.data)
    out = Path(tempfile.mkdtemp()) / "model"
    pipeline.train_and_save(dataset, pipeline.make_split(dataset), out, log=lambda *_: None)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a model folder written by train.py")
    parser.add_argument("--data", help="MovieLens 100k folder to train one from, and whose ratings are attached as "
                        "users' histories (default: fastai's path)")
    parser.add_argument("--repeats", type=int, default=500, help="timed calls per row (default 500)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 20 calls per row")
    args = parser.parse_args()
    repeats = 20 if args.quick else args.repeats
    folder = model_folder(args)
    rng = np.random.default_rng(0)
    try:  # histories: seen titles left out and, for the top-N model, the reasons computed, as in the app
        ratings = data.load(args.data).ratings
    except data.DataError as err:
        ratings = None
        print(f"no histories attached ({err})")

    print(f"model: {folder}; {repeats} calls per row; math threads: {os.environ['OPENBLAS_NUM_THREADS']}\n")
    print("| model | call | median | p95 |")
    print("|---|---|---|---|")
    for kind in ("topn", "dot", "nn"):
        rec = Recommender.from_pretrained(folder, model=kind).attach_history(ratings)
        users, titles = rec.users.ids(), rec.items.keys[1:]
        newcomer = {titles[i]: float(rng.integers(1, 6)) for i in rng.choice(len(titles), 10, replace=False)}
        calls = {
            "recommend(user, 10)": lambda: rec.recommend(users[rng.integers(len(users))], 10),
            "similar(title, 10)": lambda: rec.similar(titles[rng.integers(len(titles))], 10),
            "similar(loose title, 10)": lambda: rec.similar("silence of the lambs", 10),
            "fold_in(10 ratings)": lambda: rec.fold_in(newcomer),
            "predict_all (943 x 1682)": rec.predict_all,
        }
        for name, call in calls.items():
            n = repeats if "predict_all" not in name and not (kind == "nn" and "fold_in" in name) else max(5, repeats // 25)
            spent = timings(call, n)
            p95 = float(np.percentile(spent, 95))
            print(f"| {kind} | `{name}` | {fmt(statistics.median(spent))} | {fmt(p95)} |")


if __name__ == "__main__":
    main()
