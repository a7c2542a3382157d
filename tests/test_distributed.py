"""train.py under torchrun: two CPU processes (gloo) train the default models data-parallel (DDP)."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hfcf import Recommender

pytest.importorskip("fastai")
ROOT = Path(__file__).resolve().parents[1]
# One math thread a process: two processes on two cores, as the README advises for CPU runs.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def torchrun(*args, script="train.py", nproc=2):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", script,
            *args]


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory):
    """The same training (synthetic data, seed 42) in one process and in two."""
    out = tmp_path_factory.mktemp("ddp")
    common = ["--data", "synthetic", "--epochs", "4", "--seed", "42"]
    single = subprocess.run([sys.executable, "train.py", *common, "--out", str(out / "one")], cwd=ROOT, env=ENV,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    double = subprocess.run(torchrun(*common, "--out", str(out / "two")), cwd=ROOT, env=ENV, capture_output=True,
                            text=True, timeout=300)
    assert double.returncode == 0, double.stdout[-3000:] + double.stderr[-3000:]
    return out / "one", out / "two", double


def test_two_processes_write_one_folder_that_loads_like_any_other(one_and_two):
    _, two, run = one_and_two
    rec = Recommender.from_pretrained(two)
    assert rec.model == "topn" and len(rec.recommend(rec.users.ids()[0], 5)) == 5
    config = json.loads((two / "config.json").read_text())
    assert config["distributed"]["world_size"] == 2 and config["distributed"]["backend"] == "gloo"
    assert "Trained data-parallel over 2 processes (gloo" in (two / "README.md").read_text()
    assert run.stdout.count("dot epoch 4:") == 1  # rank 0 alone logs
    assert run.stdout.count("wrote ") == 1 and "Data-parallel over 2 processes (gloo)" in run.stdout


def test_two_processes_reach_the_one_process_accuracy(one_and_two):
    one, two, _ = one_and_two
    single, double = (json.loads((folder / "config.json").read_text()) for folder in (one, two))
    for kind in ("dot", "nn"):
        assert abs(single["metrics"][kind]["rmse"] - double["metrics"][kind]["rmse"]) <= 0.01, kind
    assert abs(single["ranking"]["topn"]["precision@10"] - double["ranking"]["topn"]["precision@10"]) <= 0.02
    assert single["distributed"]["world_size"] == 1 and single["distributed"]["backend"] is None


def worker_pids(parent):
    """The processes whose parent is `parent` (torchrun's workers)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent:
                children.append(int(entry.name))
    return children


def test_a_rank_killed_mid_training_ends_every_rank_and_leaves_no_folder(tmp_path):
    out = tmp_path / "model"
    run = subprocess.Popen(torchrun("--data", "synthetic", "--epochs", "300", "--out", str(out)), cwd=ROOT, env=ENV,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in run.stdout:
        if "dot epoch 3:" in line:
            break
    workers = worker_pids(run.pid)
    assert len(workers) == 2, workers
    os.kill(max(workers), signal.SIGKILL)  # the later-started worker: rank 1
    rest, _ = run.communicate(timeout=120)
    assert run.returncode != 0, rest[-2000:]
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    assert not out.exists() and not any(tmp_path.iterdir())


DIFFERENT_DATA = textwrap.dedent("""
    import os, sys
    sys.argv[0] = "train.py"
    import train
    from hfcf import data
    load = data.load
    def one_rating_fewer(*args, **kwargs):  # rank 1 reads other data than rank 0
        dataset = load(*args, **kwargs)
        if os.environ["RANK"] == "1":
            dataset.ratings = dataset.ratings.iloc[1:]
        return dataset
    data.load = one_rating_fewer
    sys.exit(train.main(sys.argv[1:]))
""")


def test_ranks_that_read_different_data_are_refused_with_the_reason(tmp_path):
    script = tmp_path / "different.py"
    script.write_text(DIFFERENT_DATA)
    started = time.perf_counter()
    run = subprocess.run(torchrun("--data", "synthetic", "--out", str(tmp_path / "model"), script=str(script)),
                         cwd=ROOT, env={**ENV, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert "ranks 1 built other vocabularies than rank 0" in run.stderr and "on rank 0 of 2" in run.stderr
    assert not (tmp_path / "model").exists()
    assert time.perf_counter() - started < 120


def test_one_process_is_not_distributed(monkeypatch):
    from hfcf import distributed

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.join() is distributed.SINGLE and not distributed.SINGLE.distributed


def test_a_batch_too_small_for_every_rank_and_nccl_are_refused(tmp_path):
    run = subprocess.run(torchrun("--data", "synthetic", "--models", "dot", "--bs", "3", "--out", str(tmp_path / "m")),
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "raise --bs to at least 4" in run.stderr
    run = subprocess.run(torchrun("--data", "synthetic", "--out", str(tmp_path / "m")), cwd=ROOT,
                         env={**ENV, "HFCF_DIST_BACKEND": "nccl"}, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "hfcf trains on the CPU, where only gloo works" in run.stderr
    assert not (tmp_path / "m").exists()
