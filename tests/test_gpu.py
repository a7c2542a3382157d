"""Training on a CUDA GPU. Marked `gpu`: skipped where torch sees no CUDA device (CI); bench/gpu.sh runs them."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hfcf import Recommender, distributed, pipeline

pytest.importorskip("fastai")
pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def on_gpu_and_cpu(tmp_path_factory, synthetic_dataset):
    """The same training (synthetic data, every model, lazy rating models) on cuda:0 and on the CPU."""
    from hfcf import training
    import dataclasses

    settings = {kind: dataclasses.replace(s, epochs=8, bs=256, lr=1e-2, lazy=True) if kind != "topn" else s
                for kind, s in training.DEFAULTS.items()}
    split = pipeline.make_split(synthetic_dataset, "random", 0.2, 0)
    runs = {}
    for device in ("cuda:0", "cpu"):
        out = tmp_path_factory.mktemp(device.replace(":", "")) / "model"
        world = distributed.World(device=device)
        runs[device] = out, pipeline.train_and_save(synthetic_dataset, split, out, settings=settings, seed=0,
                                                     log=lambda *_: None, world=world), split
    return runs


def test_a_gpu_trained_folder_loads_and_answers_as_a_cpu_one(on_gpu_and_cpu):
    from test_parity import check_parity

    out, config, split = on_gpu_and_cpu["cuda:0"]
    assert json.loads((out / "config.json").read_text())["device"] == "cuda:0"
    check_parity(out, config, split)  # numpy scorers = the trained torch modules, moved to the CPU
    for kind in ("dot", "nn", "topn"):
        rec = Recommender.from_pretrained(out, model=kind)
        assert len(rec.recommend(rec.users.ids()[0], 5)) == 5
    cpu_out = on_gpu_and_cpu["cpu"][0]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in cpu_out.iterdir())


def test_a_gpu_learns_what_the_cpu_learns(on_gpu_and_cpu):
    gpu, cpu = on_gpu_and_cpu["cuda:0"][1], on_gpu_and_cpu["cpu"][1]
    for kind in ("dot", "nn"):
        assert abs(gpu["metrics"][kind]["rmse"] - cpu["metrics"][kind]["rmse"]) <= 0.01, kind
    gpu_p10, cpu_p10 = (run["ranking"]["topn"]["precision@10"] for run in (gpu, cpu))
    assert abs(gpu_p10 - cpu_p10) <= 0.02
    weights = gpu["fitted"]["dot"].state_dict
    assert all(tensor.device.type == "cpu" for tensor in weights.values())
    assert np.isfinite(np.concatenate([t.numpy().ravel() for t in weights.values()])).all()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs a GPU for each of two processes")
def test_two_gpu_processes_train_over_nccl(tmp_path):
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "train.py", "--data", "synthetic", "--epochs", "4", "--set", "dot.lazy=true",
                          "--out", str(tmp_path / "model")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["distributed"]["backend"] == "nccl" and config["device"] == "cuda:0"
