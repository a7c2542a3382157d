"""Where a model is written and read from: symlinks are followed (never replaced), the folder keeps its
permissions and its place (even as the current folder), a full disk is a clear error, loops and bad seeds are
refused before any work."""
import errno
import os
import shutil
import stat

import pytest
from safetensors import SafetensorError

import train
from hfcf import Recommender, artifacts
from hfcf.errors import ArtifactError

pytest.importorskip("hfcf.training")
ONE_FIT = ["--data", "synthetic", "--epochs", "1", "--models", "dot"]


@pytest.fixture
def model(synthetic_model, tmp_path):
    return shutil.copytree(synthetic_model[0], tmp_path / "model")


def save_again(target, loaded=None, card="card"):
    """Write a model (`target`'s own by default) at `target`, with another card so the write shows, as train.py
    would."""
    loaded = loaded or artifacts.load(target)
    artifacts.check_output(target)
    artifacts.save(target, loaded.config, loaded.users, loaded.items, loaded.item_counts, loaded.weights, card)


def contents(folder):
    return {path.relative_to(folder): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_a_symlinked_out_is_written_through_and_the_users_files_stay(tmp_path, capsys):
    folder, link = tmp_path / "userdir", tmp_path / "link"
    (folder / "photos").mkdir(parents=True)
    (folder / "notes.txt").write_text("mine")
    (folder / "photos" / "cat.jpg").write_bytes(b"meow")
    link.symlink_to(folder)
    assert train.main([*ONE_FIT, "--out", str(link), "--force"]) == 0, capsys.readouterr().err
    assert link.is_symlink() and os.readlink(link) == str(folder)
    assert (folder / "notes.txt").read_text() == "mine" and (folder / "photos" / "cat.jpg").read_bytes() == b"meow"
    assert sorted(artifacts.load(link).weights) == ["dot"] and (folder / "dot.safetensors").is_file()
    assert sorted(os.listdir(tmp_path)) == ["link", "userdir"]


def test_a_relative_symlink_to_a_model_folder_is_written_and_read_through(model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    model.rename(tmp_path / "models" / "v3")
    (tmp_path / "current").symlink_to("models/v3")
    save_again("current")
    assert os.readlink("current") == "models/v3"
    assert (tmp_path / "models" / "v3" / "README.md").read_text() == "card"
    (tmp_path / "models" / "v3" / ".hfcf-building-dead").mkdir()  # what a killed write leaves
    assert Recommender.from_pretrained("current").users
    assert os.readlink("current") == "models/v3"
    assert not any(name.startswith(".hfcf-") for name in os.listdir("models/v3"))
    assert sorted(os.listdir(tmp_path)) == ["current", "models"]


def test_retraining_keeps_the_permissions_the_user_gave_the_folder(model, tmp_path):
    loaded = artifacts.load(model)
    (model / "topn.safetensors").unlink()  # a file the write adds, beside ones it replaces
    for path in model.iterdir():
        path.chmod(0o600)
    model.chmod(0o700)
    save_again(model, loaded)
    assert mode(model) == 0o700
    assert {path.name: mode(path) for path in model.iterdir()} == {name: 0o600 for name in artifacts.model_files()}
    umask = os.umask(0o022)
    try:  # a new folder gets the umask's modes, as any other program's would
        save_again(tmp_path / "new", loaded)
    finally:
        os.umask(umask)
    assert mode(tmp_path / "new") == 0o755 and {mode(path) for path in (tmp_path / "new").iterdir()} == {0o644}


def test_out_can_be_the_current_folder(model, monkeypatch, capsys):
    monkeypatch.chdir(model)
    assert train.main([*ONE_FIT, "--out", "."]) == 0, capsys.readouterr().err
    assert os.getcwd() == str(model) and sorted(artifacts.load(".").weights) == ["dot"]
    assert sorted(os.listdir(model)) == ["README.md", "config.json", "dot.safetensors", "vocab.json"]
    assert os.listdir(model.parent) == ["model"]


def test_out_expands_the_users_home():
    assert train.parser().parse_args(["--out=~/m"]).out == os.path.join(os.path.expanduser("~"), "m")


FULL = {"safetensors": SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
        "python": OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))}


@pytest.mark.parametrize("raised", FULL)
def test_a_full_disk_is_a_clear_error_that_keeps_the_previous_model(model, monkeypatch, raised):
    before = contents(model)

    def fill_the_disk(state, path, metadata):
        path.write_bytes(b"half a file")
        raise FULL[raised]
    monkeypatch.setattr(artifacts, "save_file", fill_the_disk)
    with pytest.raises(ArtifactError, match="No space left on device. Nothing there was changed .* free some space"):
        save_again(model)
    assert contents(model) == before and os.listdir(model.parent) == ["model"]


def test_train_py_on_a_full_disk_exits_1_with_the_message(tmp_path, monkeypatch, capsys):
    def fill_the_disk(state, path, metadata):
        raise FULL["safetensors"]
    monkeypatch.setattr(artifacts, "save_file", fill_the_disk)
    assert train.main([*ONE_FIT, "--out", str(tmp_path / "model")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: could not write the model files into") and "Traceback" not in err
    assert os.listdir(tmp_path) == []


def test_a_symlink_loop_is_refused_with_advice(tmp_path, capsys):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert train.main(["--data", "synthetic", "--out", str(loop)]) == 2
    assert "symlink loop" in capsys.readouterr().err
    for read in (Recommender.from_pretrained, artifacts.load):
        with pytest.raises(ArtifactError, match=r"loop is a symbolic link that leads back to itself .*ln -sfn"):
            read(str(loop))
    assert loop.is_symlink()


@pytest.mark.parametrize("seed", ["-1", str(2 ** 32)])
def test_a_bad_seed_is_refused_before_the_data_is_read(seed, tmp_path, capsys):
    code = train.main(["--data", str(tmp_path / "not-read-yet.csv"), "--seed", seed, "--out", str(tmp_path / "m")])
    assert code == 2 and f"--seed must be a whole number from 0 to 4294967295 (got {seed})" in capsys.readouterr().err
