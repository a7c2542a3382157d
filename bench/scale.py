"""What `python train.py` costs and learns as the data grows, on power-law synthetic ratings with planted taste.

    .venv/bin/python bench/scale.py                         # 1M, 5M, 10M and 25M ratings (~30 min)
    .venv/bin/python bench/scale.py --sizes 1000000 5000000
    .venv/bin/python bench/scale.py --quick                 # 200k ratings: a smoke run
    .venv/bin/python bench/scale.py --keep /tmp/scale-sets  # keep the generated sets for the next run
    .venv/bin/python bench/scale.py --choices 1 --sizes 1000000 5000000 --train-args "--models topn"

Each size is generated (seeded, no download: `_common.power_law_ratings`, ~178k users x 27k titles at 25M),
written as Parquet and trained by `train.py --data FILE` with its default settings and models, as a user would,
under GNU time for wall time and peak RSS. Fit seconds per million training ratings is a model's whole
fit (the search for its epochs, the refit and validation passes) over its training ratings: it should stay flat as
the data grows. Signal is the share of what biases leave that a model learns:
(bias RMSE - model RMSE) / (bias RMSE - planted RMSE), where the planted model is the one the ratings were
drawn from (its RMSE is the noise floor).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common
from _common import ROOT, markdown_table, power_law_ratings, taste_chosen_ratings


def train(data, out, extra):
    """(wall seconds, peak RSS in GB, config) of `train.py --data data --out out`."""
    gnu_time = Path("/usr/bin/time").exists()
    command = [*(["/usr/bin/time", "-f", "%e %M"] if gnu_time else []), sys.executable, "train.py",
               "--data", str(data), "--out", str(out), *extra]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    if gnu_time:
        wall, kilobytes = done.stderr.strip().splitlines()[-1].split()
    else:  # no GNU time (a bare GPU image): the largest child's peak so far, which is this run's or an earlier one's
        import resource

        wall, kilobytes = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return float(wall), int(kilobytes) / 2**20, json.loads((out / "config.json").read_text())


HEADERS = ["ratings", "users x titles", "train.py wall s", "peak RSS GB", "fit s per M training ratings", "mean", "bias",
           "planted", "dot (signal)", "nn (signal)", "recall@10 (popularity / models)"]


def generate(size, folder, choice=None):
    """(Parquet file, "users x titles", planted RMSE, seconds taken) of `size` seeded power-law ratings in `folder`
    (with titles chosen by taste when `choice` is given); a file a previous run left there (--keep) is read back
    with its shape and planted RMSE instead."""
    name = f"ratings-{size}-seed{_common.SEED}" + (f"-choice{choice:g}" if choice is not None else "")
    data, facts = folder / f"{name}.parquet", folder / f"{name}.json"
    if data.exists() and facts.exists():
        known = json.loads(facts.read_text())
        return data, known["shape"], known["floor"], 0.0
    started = time.perf_counter()
    frame, floor = (power_law_ratings(size, seed=_common.SEED) if choice is None
                    else taste_chosen_ratings(size, seed=_common.SEED, choice=choice))
    frame.to_parquet(data, index=False)
    shape = f"{frame['user'].nunique():,} x {frame['item'].nunique():,}"
    facts.write_text(json.dumps({"shape": shape, "floor": floor}))
    return data, shape, floor, time.perf_counter() - started


def measure(size, sets, scratch, extra, choice=None):
    """(table row, footnote) for `size` generated ratings (in folder `sets`) trained by train.py with `extra`
    arguments into a model folder in `scratch`."""
    data, shape, floor, generated = generate(size, sets, choice)
    wall, peak, config = train(data, scratch / f"model-{size}", extra)
    metrics, models, n_train = config["metrics"], config["models"], config["split"]["n_train"]
    bias = metrics["user+item bias"]["rmse"]

    def rmse(name):
        return f"{metrics[name]['rmse']:.4f}" if name in metrics else "-"

    def with_signal(kind):
        return f"{rmse(kind)} ({(bias - metrics[kind]['rmse']) / (bias - floor):.0%})" if kind in metrics else "-"

    row = [f"{size / 1e6:g}M", shape, f"{wall:.0f}", f"{peak:.2f}",
           # the whole fit, the epoch search included: what a rating costs, whatever epochs the data chose
           " / ".join(f"{kind} {model['fit_seconds'] / n_train * 1e6:.1f}" for kind, model in models.items()),
           rmse("global mean"), rmse("user+item bias"), f"{floor:.4f}", with_signal("dot"), with_signal("nn"),
           " / ".join(f"{name} {value['recall@10']:.3f}" for name, value in config["ranking"].items())]
    fits = [f"{kind} {model['epochs']} epochs bs {model['bs']} {model['fit_seconds']:.0f} s"
            for kind, model in models.items()]
    made = f"generated in {generated:.0f} s" if generated else "generated by an earlier run (--keep)"
    note = f"{size / 1e6:g}M: {made}; " + "; ".join(fits)
    return row, note


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000, 10_000_000, 25_000_000])
    p.add_argument("--train-args", default="", help="extra train.py arguments, e.g. '--models dot,nn'")
    p.add_argument("--quick", action="store_true", help="a smoke run: 200k ratings")
    p.add_argument("--choices", type=float, metavar="STRENGTH",
                   help="users choose what they rate by their planted taste with this strength (1: as strong as "
                        "the ratings' own taste term), so a top-N model has more than popularity to learn")
    p.add_argument("--keep", type=Path, metavar="DIR",
                   help="generate the sets into DIR and reuse those already there (25M takes ~10 minutes to make)")
    args = p.parse_args()
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as scratch:
        sets = args.keep or Path(scratch)
        sets.mkdir(parents=True, exist_ok=True)
        for size in [200_000] if args.quick else args.sizes:
            row, note = measure(size, sets, Path(scratch), args.train_args.split(), args.choices)
            rows.append(row)
            notes.append(note)
            print(f"done {size:,}: {row[2]} s, {row[3]} GB", file=sys.stderr, flush=True)
    print(markdown_table(HEADERS, rows))
    print()
    print("\n".join(notes))
    print(f"\n{_common.machine()}; train.py with its own thread settings")


if __name__ == "__main__":
    _common.run(main)
