"""One process against two (torchrun, gloo, DistributedDataParallel) on this machine, on power-law synthetic
ratings with planted taste: wall time, ratings per second per epoch and RMSE, for the dot model.

    .venv/bin/python bench/distributed.py                      # 1M and 10M ratings, 2 epochs each (~15 min)
    .venv/bin/python bench/distributed.py --sizes 1000000 --epochs 1
    .venv/bin/python bench/distributed.py --quick              # 200k ratings, 1 epoch: a smoke run

Both runs use `train.py --models dot` with the same seed and global batch; the single process uses the
machine's 2 cores as torch threads, each of the two processes one (OMP_NUM_THREADS=1).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, power_law_ratings


def run(command, env, out):
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    config = json.loads((out / "config.json").read_text())
    return time.perf_counter() - started, config


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--bs", type=int, default=8192, help="global batch (each of two processes takes half)")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    sizes, epochs = ([200_000], 1) if args.quick else (args.sizes, args.epochs)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        for size in sizes:
            frame, floor = power_law_ratings(size)
            data = folder / f"ratings-{size}.parquet"
            frame.to_parquet(data)
            common = ["--data", str(data), "--models", "dot", "--epochs", str(epochs), "--bs", str(args.bs),
                      "--y-range", "0,5.5", "--seed", "42"]
            for processes in (1, 2):
                out = folder / f"model-{size}-{processes}"
                if processes == 1:
                    command, env = [sys.executable, "train.py", *common, "--out", str(out)], dict(os.environ)
                else:
                    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                               "train.py", *common, "--out", str(out)]
                    env = {**os.environ, "OMP_NUM_THREADS": "1"}
                wall, config = run(command, env, out)
                dot = config["models"]["dot"]
                n_train = config["split"]["n_train"]
                rows.append([f"{config['dataset']['n_ratings']:,}",
                             f"{config['dataset']['n_users']:,} x {config['dataset']['n_items']:,}",
                             processes, f"{wall:.0f}", f"{dot['fit_seconds']:.1f}",
                             f"{n_train * epochs / dot['fit_seconds'] / 1e6:.2f}", f"{dot['metrics']['rmse']:.4f}",
                             f"{config['metrics']['user+item bias']['rmse']:.4f}", f"{floor:.4f}"])
                print(" | ".join(map(str, rows[-1])), file=sys.stderr, flush=True)
    headers = ["ratings", "users x titles", "processes", "train.py wall s", "dot fit s", "M ratings/s",
               "dot RMSE", "bias RMSE", "planted noise"]
    print("| " + " | ".join(headers) + " |\n|" + "|".join("---" for _ in headers) + "|")
    for row in rows:
        print("| " + " | ".join(map(str, row)) + " |")
    print(f"\n{epochs} epoch(s) of the dot model (100 factors), global batch {args.bs}, 80/20 random split, seed 42; "
          f"{os.cpu_count()} cores.")


if __name__ == "__main__":
    main()
