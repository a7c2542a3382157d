"""Shared fixtures: the MovieLens 100k copy beside the checkout, and small models trained once per session."""
import os
from pathlib import Path

import pytest
import torch

# Before anything imports gradio or huggingface_hub: no analytics, no telemetry, no real Hub.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# CI has 2 cores shared with the app server and chromium: one thread is faster and steadier for these small models.
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu are skipped, saying why, where torch sees no CUDA device (CI, this machine)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch sees none); bench/gpu.sh runs these on one")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def ml100k_path():
    """The shared MovieLens 100k copy (../shared/data/ml-100k beside the checkout), or HFCF_ML100K."""
    return Path(os.environ.get("HFCF_ML100K", ROOT.parent / "shared" / "data" / "ml-100k"))


@pytest.fixture(scope="session")
def ml100k():
    path = ml100k_path()
    if not (path / "u.data").is_file():
        pytest.skip(f"MovieLens 100k not found at {path} (set HFCF_ML100K)")
    return path


@pytest.fixture(autouse=True)
def _isolated_homes(tmp_path_factory, monkeypatch):
    """Keep caches out of the user's home; FASTAI_HOME points at a folder holding the shared MovieLens copy."""
    fastai_home = tmp_path_factory.getbasetemp() / "fastai-home"
    if not fastai_home.exists():
        (fastai_home / "data").mkdir(parents=True)
        if (ml100k_path() / "u.data").is_file():
            (fastai_home / "data" / "ml-100k").symlink_to(ml100k_path())
    monkeypatch.setenv("FASTAI_HOME", str(fastai_home))
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.getbasetemp() / "hf-home"))


@pytest.fixture(scope="session")
def synthetic_dataset():
    from hfcf import data
    return data.synthetic(seed=0)


@pytest.fixture(scope="session")
def synthetic_model(tmp_path_factory, synthetic_dataset):
    """A folder with every model trained on the synthetic set (a few seconds): (folder, config, split, {kind:
    training.Fitted})."""
    pytest.importorskip("fastai")
    from hfcf import pipeline
    from hfcf.kinds import KINDS
    import dataclasses

    # Fewer epochs for the rating models (a few thousand ratings); the top-N model keeps its defaults (~1 s here).
    # The nn keeps BatchNorm, as older folders have it, so that its folding into the scorer is checked on trained
    # weights (the default, without it, is trained on MovieLens 100k by `ml100k_model`).
    settings = {name: dataclasses.replace(kind.base, epochs=8, bs=256, lr=1e-2) if kind.predicts_ratings else kind.base
                for name, kind in KINDS.items()}
    settings["nn"] = dataclasses.replace(settings["nn"], batchnorm=True)
    out = tmp_path_factory.mktemp("synthetic") / "model"
    split = pipeline.make_split(synthetic_dataset, "random", 0.2, 0)
    config, fitted = pipeline.train_and_save(synthetic_dataset, split, out, settings=settings, seed=0,
                                             log=lambda *_: None)
    return out, config, split, fitted


@pytest.fixture(scope="session")
def ml100k_model(tmp_path_factory, ml100k):
    """Every model trained on MovieLens 100k with the CLI's defaults (a few seconds each)."""
    pytest.importorskip("fastai")
    from hfcf import data, pipeline

    dataset = data.movielens_100k(ml100k)
    out = tmp_path_factory.mktemp("ml100k") / "model"
    split = pipeline.make_split(dataset, "random", 0.2, 42)
    config, fitted = pipeline.train_and_save(dataset, split, out, seed=42, log=lambda *_: None)
    return out, config, split, dataset, fitted


@pytest.fixture(scope="module")
def serve_app():
    """Launch `app.build_demo` apps on 127.0.0.1 (a free port, the production queue); closed after the module."""
    import socket
    import sys

    sys.path.insert(0, str(ROOT))  # app.py lives at the repo root, as a Space's app_file does
    import app
    from hfcf import space

    demos = []

    def serve(recommenders, note=""):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        demo = app.build_demo(recommenders, note)
        _, url, _ = app.serve(demo, "127.0.0.1", port, max_request_bytes=space.max_request_bytes(recommenders),
                              prevent_thread_lock=True, quiet=True)
        demos.append(demo)
        return url

    yield serve
    for demo in demos:
        demo.close()


@pytest.fixture(scope="session")
def csv_model(tmp_path_factory):
    """A model trained on a CSV of ratings with a titles table (not MovieLens), and that CSV."""
    pytest.importorskip("fastai")
    import numpy as np

    import train

    folder = tmp_path_factory.mktemp("books")
    rng = np.random.default_rng(3)
    (folder / "books.csv").write_text("book,name\n" + "".join(f"{i},Book number {i}\n" for i in range(1, 61)))
    pairs = sorted({(int(u), int(b)) for u, b in zip(rng.integers(1, 81, 3000), rng.integers(1, 61, 3000))})
    (folder / "stars.csv").write_text("reader,book,stars\n" + "".join(f"{u},{b},{(u + b) % 5 + 1}\n" for u, b in pairs))
    assert train.main(["--data", str(folder / "stars.csv"), "--user-col", "reader", "--item-col", "book",
                       "--rating-col", "stars", "--titles", str(folder / "books.csv"), "--title-col", "name",
                       "--epochs", "2", "--out", str(folder / "model")]) == 0
    return folder
