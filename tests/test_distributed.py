"""train.py under torchrun: two CPU processes (gloo) train the models data-parallel; --device."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

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
    """The same training (synthetic data, seed 42) in one process and in two; the rating models update lazily,
    so their embeddings are exchanged as rows looked up and the nn's layers through DDP, the top-N model's tables
    through DDP."""
    out = tmp_path_factory.mktemp("ddp")
    # the nn's embedding dropout given (its choice on a tiny inner slice could fall either way in two processes) and
    # a batch large enough for each rank's BatchNorm to normalise alike
    common = ["--data", "synthetic", "--epochs", "4", "--bs", "256", "--seed", "42", "--set", "dot.lazy=true",
              "--set", "nn.lazy=true", "--set", "nn.embed_p=0"]
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
    assert abs(single["metrics"]["dot"]["rmse"] - double["metrics"]["dot"]["rmse"]) <= 0.002
    # each rank draws its own dropout masks and normalises its own half batch: the nn learns alike, not the same
    assert abs(single["metrics"]["nn"]["rmse"] - double["metrics"]["nn"]["rmse"]) <= 0.02
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
    assert run.returncode != 0 and "NCCL joins CUDA devices, and this run trains on cpu" in run.stderr
    assert not (tmp_path / "m").exists()


def ratings_file(path, n_users, n_items=60, n_ratings=6000, seed=0):
    """`n_ratings` distinct random ratings of `n_items` titles by `n_users` users, as a CSV."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    pairs = rng.choice(n_users * n_items, n_ratings, replace=False)
    pd.DataFrame({"user": pairs // n_items, "item": pairs % n_items,
                  "rating": rng.integers(1, 6, n_ratings)}).to_csv(path, index=False)
    return path


def test_bytes_exchanged_a_step_follow_the_rows_a_batch_looks_up_not_the_tables(tmp_path):
    sent = {}
    for users in (300, 3000):  # 10x the users, the same ratings and batch
        data = ratings_file(tmp_path / f"ratings-{users}.csv", users)
        out = tmp_path / f"model-{users}"
        run = subprocess.run(torchrun("--data", str(data), "--models", "dot", "--set", "dot.lazy=true", "--bs", "256",
                                      "--epochs", "1", "--out", str(out)), cwd=ROOT, env=ENV, capture_output=True,
                             text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        config = json.loads((out / "config.json").read_text())
        sent[users] = config["models"]["dot"]["bytes_per_step"]
        rows = config["dataset"]["n_users"] + config["dataset"]["n_items"]
        tables = rows * (config["models"]["dot"]["n_factors"] + 1) * 4
    assert sent[3000] < 2 * sent[300], sent
    assert sent[3000] < tables / 4, (sent, tables)  # a whole-table all-reduce would send the tables each step


def test_batches_too_small_to_split_by_user_still_learn_the_one_process_model(tmp_path):
    # 8 ratings a batch: about one batch in 14 leaves a rank fewer than two of its users' ratings and is cut in
    # contiguous halves instead, its users' rows read and updated across ranks (had those rows not been sent
    # before such a batch, this RMSE would move by 0.012)
    common = ["--data", "synthetic", "--models", "dot", "--set", "dot.lazy=true", "--bs", "8", "--epochs", "2",
              "--lr", "0.01", "--seed", "42"]
    single = subprocess.run([sys.executable, "train.py", *common, "--out", str(tmp_path / "one")], cwd=ROOT, env=ENV,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    double = subprocess.run(torchrun(*common, "--out", str(tmp_path / "two")), cwd=ROOT, env=ENV,
                            capture_output=True, text=True, timeout=300)
    assert double.returncode == 0, double.stderr[-3000:]
    rmse = [json.loads((tmp_path / name / "config.json").read_text())["metrics"]["dot"]["rmse"] for name in ("one", "two")]
    assert abs(rmse[0] - rmse[1]) <= 0.002, rmse


def test_each_rank_takes_its_users_ratings_unless_a_rank_would_get_fewer_than_two():
    from hfcf import distributed

    rows, users = torch.arange(10, 20), torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    for rank in (0, 1):
        mine, by_owner = distributed.split_by_owner(rows, users, distributed.World(rank, 2, "gloo"))
        assert by_owner and mine.tolist() == [row for row in range(10, 20) if row % 2 == rank]
    few = torch.tensor([0, 2, 4, 6, 8, 1, 2, 4, 6, 8])  # rank 1 owns one rating's user
    for rank in (0, 1):
        mine, by_owner = distributed.split_by_owner(rows, few, distributed.World(rank, 2, "gloo"))
        assert not by_owner and mine.tolist() == list(range(10 + 5 * rank, 15 + 5 * rank))  # contiguous halves


def test_rows_are_summed_alike_whether_marked_or_sorted():
    from hfcf import distributed

    for size in (50, 10 ** 6):  # flags for a small table, a sort for a large one
        keys = torch.randint(0, size, (1000,), generator=torch.Generator().manual_seed(size))
        assert all(map(torch.equal, distributed.unique(keys, size), torch.unique(keys, return_inverse=True)))
        values = torch.randn(1000, 3)
        summed = distributed.sum_rows(keys, size, [[values[:400], values[400:]]])
        expected = torch.zeros(size, 3).index_add_(0, keys, values)[summed.rows]
        assert torch.allclose(summed.values[0], expected, atol=1e-6)
        assert torch.equal(summed.rows, torch.unique(keys))


def test_an_int32_permutation_is_the_int64_one():
    # TensorBatches draws the order of a data-parallel epoch as int32 and must draw one process's order
    for n in (10, 100_003):
        draws = [torch.randperm(n, generator=torch.Generator().manual_seed(7), dtype=dtype)
                 for dtype in (torch.int64, torch.int32)]
        assert torch.equal(draws[0], draws[1].long())


def test_device_cuda_without_cuda_is_refused_naming_what_was_found(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    run = subprocess.run([sys.executable, "train.py", "--data", "synthetic", "--device", "cuda",
                          "--out", str(tmp_path / "m")], cwd=ROOT, env=ENV, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 2, run.stderr
    assert "--device cuda: no CUDA device here (found no CUDA device: torch " in run.stderr
    assert not (tmp_path / "m").exists()


def test_device_names_are_checked(monkeypatch):
    from hfcf import distributed
    from hfcf.errors import DataError

    assert distributed.resolve_device("cpu") == "cpu"
    assert distributed.resolve_device("auto") == ("cuda:0" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DataError, match="expected auto, cpu, cuda, cuda:N or mps"):
        distributed.resolve_device("gpu")
    monkeypatch.setattr(distributed, "cuda_count", lambda: 2)
    assert distributed.resolve_device("cuda", local_rank=1) == "cuda:1"  # torchrun's rank 1 takes GPU 1
    assert distributed.resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(DataError, match="has 2 CUDA device"):
        distributed.resolve_device("cuda:2")
    with pytest.raises(DataError, match="each process takes the GPU of its LOCAL_RANK"):
        distributed.resolve_device("cuda:0", local_rank=1)
