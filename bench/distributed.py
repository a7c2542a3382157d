"""Data-parallel training on this machine's CPUs: one process with one thread, two processes (torchrun, Gloo) with one
thread each, and one process with two threads, on power-law synthetic ratings with planted taste: wall time,
ratings per second, gradient bytes a process sends per step, and RMSE (top-N: precision@10) for each model.

    .venv/bin/python bench/distributed.py                      # 1M and 10M ratings, all models, their defaults
    .venv/bin/python bench/distributed.py --sizes 10000000 --models dot
    .venv/bin/python bench/distributed.py --quick              # 200k ratings, dot, 1 epoch: a smoke run

Every run is `train.py --data FILE --models ...` with the same seed and global batch (the data's defaults unless
--bs/--epochs say), run one after the other; `uptime`'s load average is printed beside each, since other work on a
shared machine changes what two processes can get, and the CPU seconds other processes used during the run (a
figure measured while other work ran is not a figure of this code).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, power_law_ratings

# (label, processes, threads a process)
LAYOUTS = [("1 process x 1 thread", 1, 1), ("2 processes x 1 thread", 2, 1), ("1 process x 2 threads", 1, 2)]


def run(command, env, out):
    """(wall seconds, config.json, CPU seconds other processes used meanwhile) of one train.py run."""
    started, busy, ours = time.perf_counter(), busy_seconds(), children_seconds()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    config = json.loads((out / "config.json").read_text())
    others = busy_seconds() - busy - (children_seconds() - ours) if busy is not None else None
    return time.perf_counter() - started, config, others


def busy_seconds():
    """CPU seconds this machine has spent busy since boot (/proc/stat), or None where there is no /proc."""
    try:
        fields = [int(value) for value in open("/proc/stat").readline().split()[1:]]
    except OSError:
        return None
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


def children_seconds():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def load_average():
    return os.getloadavg()[0]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    p.add_argument("--models", default="dot,nn,topn")
    p.add_argument("--epochs", type=int, help="every model's epochs (default: the data's defaults)")
    p.add_argument("--bs", type=int, help="every model's global batch (default: the data's defaults)")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    sizes, models = ([200_000], "dot") if args.quick else (args.sizes, args.models)
    epochs = 1 if args.quick else args.epochs
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        for size in sizes:
            frame, floor = power_law_ratings(size)
            data = folder / f"ratings-{size}.parquet"
            frame.to_parquet(data)
            del frame
            common = ["--data", str(data), "--models", models, "--y-range", "0,5.5", "--seed", "42", "--device", "cpu",
                      *(["--epochs", str(epochs)] if epochs else []), *(["--bs", str(args.bs)] if args.bs else [])]
            for label, processes, threads in LAYOUTS:
                out = folder / f"model-{size}-{processes}x{threads}"
                env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
                command = [sys.executable, "train.py", *common, "--out", str(out)] if processes == 1 else \
                    [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                     "train.py", *common, "--out", str(out)]
                load = load_average()
                wall, config, others = run(command, env, out)
                n_train = config["split"]["n_train"]
                for kind, model in config["models"].items():
                    quality = (f"P@10 {config['ranking'][kind]['precision@10']:.4f}" if kind == "topn" else
                               f"{model['metrics']['rmse']:.4f}")
                    rows.append([f"{config['dataset']['n_ratings']:,}", kind, label, f"{wall:.0f}",
                                 f"{model['fit_seconds']:.1f}",
                                 f"{n_train * model['epochs'] / model['fit_seconds'] / 1e6:.2f}",
                                 f"{model.get('bytes_per_step', 0) / 1e6:.2f}" if processes > 1 else "-",
                                 quality, f"{load:.2f}", "-" if others is None else f"{max(others, 0):.0f}"])
                    print(" | ".join(map(str, rows[-1])), file=sys.stderr, flush=True)
            bias = config["metrics"].get("user+item bias", {}).get("rmse")
            print(f"{size:,}: {config['dataset']['n_users']:,} users x {config['dataset']['n_items']:,} titles; "
                  f"bias RMSE {bias}, planted {floor:.4f}; batches "
                  + ", ".join(f"{kind} {model['bs']}" for kind, model in config["models"].items()), file=sys.stderr)
    headers = ["ratings", "model", "layout", "train.py wall s", "fit s", "M ratings/s", "MB sent a step per process",
               "RMSE", "load before", "others' CPU s"]
    print("| " + " | ".join(headers) + " |\n|" + "|".join("---" for _ in headers) + "|")
    for row in rows:
        print("| " + " | ".join(map(str, row)) + " |")
    print(f"\nEach model's defaults for the data's size{f', {epochs} epoch(s)' if epochs else ''}"
          f"{f', global batch {args.bs}' if args.bs else ''}; 80/20 random split, seed 42; {os.cpu_count()} cores. "
          "The wall time covers all the models of one run.")


if __name__ == "__main__":
    main()
