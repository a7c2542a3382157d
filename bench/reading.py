"""What reading a ratings file costs, by shape: the same rows as a tidy CSV and as headerless whitespace text.

Each file is generated under a temporary folder (distinct user-item pairs, ~140 a user, ratings in halves from 0.5 to
5: reading does not care what the ratings mean, so no planted model is drawn), then read
by `hfcf.data.load` (detection, parsing, validation, fingerprint) in a fresh process per run, so one file's memory
does not slow the next; runs alternate between the shapes and the median is kept.

    .venv/bin/python bench/reading.py                      # 25M rows, 2 runs each (~6 min here)
    .venv/bin/python bench/reading.py --rows 1000000 --runs 3
    .venv/bin/python bench/reading.py --quick              # 200k rows: a smoke run
"""
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import _common

SHAPES = {"tidy CSV (header, commas)": ("ratings.csv", ",", True),
          "headerless whitespace (`1 14 5` lines)": ("ratings_1.txt", " ", False)}
LOAD = """
import json, sys, time
from hfcf import data
started = time.perf_counter()
dataset = data.load(sys.argv[1])
print(json.dumps({"seconds": time.perf_counter() - started, "rows": len(dataset.ratings),
                  "read_as": dataset.reading.describe()}))
"""


def ratings(n, per_user=140, n_items=27_449):
    """`n` distinct (user, item, rating) rows: user r // per_user, items a stride apart (7919 is prime to n_items)."""
    import numpy as np
    import pandas as pd

    rows = np.arange(n, dtype=np.int64)
    users = rows // per_user
    items = (rows * 7919 + users * 13) % n_items
    stars = np.random.default_rng(_common.SEED).integers(1, 11, n) / 2
    return pd.DataFrame({"user": users + 1, "item": items + 1, "rating": stars})


def write(frame, folder):
    """Each shape of `frame` as a file in `folder`, written by pyarrow (no per-row Python)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    table = pa.Table.from_pandas(frame, preserve_index=False)
    for name, sep, header in SHAPES.values():
        options = pacsv.WriteOptions(include_header=header, delimiter=sep, quoting_style="none")
        pacsv.write_csv(table, folder / name, write_options=options)


def load_seconds(path):
    done = subprocess.run([sys.executable, "-c", LOAD, str(path)], cwd=_common.ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"reading {path} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    p = _common.parser(__doc__)
    p.add_argument("--rows", type=int, default=25_000_000, help="ratings in each file (25,000,000)")
    p.add_argument("--runs", type=int, default=2, help="reads of each file, alternating (2)")
    args = p.parse_args()
    rows, runs = (200_000, 1) if args.quick else (args.rows, args.runs)
    frame = ratings(rows)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        write(frame, folder)
        del frame
        results = {shape: [] for shape in SHAPES}
        for _ in range(runs):
            for shape, (name, _, _) in SHAPES.items():
                results[shape].append(load_seconds(folder / name))
        sizes = {shape: (folder / name).stat().st_size for shape, (name, _, _) in SHAPES.items()}
    tidy = _common.median([run["seconds"] for run in results[next(iter(SHAPES))]])
    table = []
    for shape, found in results.items():
        seconds = _common.median([run["seconds"] for run in found])
        table.append([shape, f"{found[0]['rows']:,}", f"{sizes[shape] / 2**20:,.0f} MiB", found[0]["read_as"],
                      f"{seconds:.2f}", f"{seconds / tidy:.2f}x"])
    print(_common.markdown_table(["file", "ratings", "size", "read as", "data.load s (median)", "ratio to tidy"],
                                 table))
    print()
    print(f"{runs} run(s) each, alternating, a fresh process per read; {_common.machine()}")
    if args.quick:
        print("--quick: 200k rows, one run: a smoke run, not a result.")


if __name__ == "__main__":
    _common.run(main)
