"""Save and load a model folder (format version 1): safetensors + JSON only, written crash-safely, loaded strictly.

    README.md        model card (YAML front matter + text)
    config.json      format_version, y_range, per-model settings/metrics/sha256, dataset, split, metrics
    vocab.json       {"users": [...], "items": [...], "item_counts": [...]} in embedding-row order, "#na#" first;
                     item_counts (ratings per item in the training data, a popularity aggregate, never the ratings)
    KIND.safetensors one per model kind (hfcf.kinds), holding the tensors its `tensors` schema names

Nothing here unpickles: a folder is trusted only after every file's hash, key, shape, dtype and value checks out.
"""
import errno
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import struct
import tempfile
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save_file

from .errors import ArtifactError, DataError
from .kinds import KINDS, as_numpy
from .vocab import NA, ItemVocab, UserVocab

FORMAT_VERSION = 1
FILES = ("README.md", "config.json", "vocab.json")  # and one weights file per model
PICKLE_SUFFIXES = (".bin", ".pkl", ".pickle", ".pt", ".pth", ".ckpt")
_MAX_HEADER = 1 << 20  # our headers are a few KB; a larger claim is corruption or an attack
_TEMPORARY = ".hfcf-"  # what a write keeps inside the folder while it lasts (never pushed: not a model_files name)
_BUILDING, _READY = f"{_TEMPORARY}building-", f"{_TEMPORARY}ready-"
_FULL = (errno.ENOSPC, errno.EDQUOT)  # a write that more room would let through


@dataclass
class ModelFolder:
    """A loaded, verified model folder."""

    path: Path
    config: dict
    users: UserVocab
    items: ItemVocab
    weights: dict  # kind -> {tensor name: numpy array}, as the kind's scorer reads them
    item_counts: list

    @property
    def y_range(self):
        return tuple(self.config["y_range"])


def weight_files():
    """{kind: its weights file} of every registered kind."""
    return {name: kind.weights_file for name, kind in KINDS.items()}


def model_files():
    """Every file a model folder may hold."""
    return (*FILES, *weight_files().values())


def write_text_atomically(path, text):
    """Replace a file in one step (a sibling temporary file, then a rename): never half-written."""
    path = Path(path)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False,
                                     encoding="utf-8") as file:
        file.write(text)
    os.chmod(file.name, _file_mode(path))
    os.replace(file.name, path)


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_model_folder(path):
    """True when `path` holds an hfcf config.json (so replacing it loses no one's files)."""
    try:
        return json.loads((Path(path) / "config.json").read_text()).get("library") == "hfcf"
    except (OSError, ValueError, AttributeError):
        return False


def real_folder(path, error=ArtifactError):
    """`path` with `~` expanded and every symlink followed: hfcf writes through a link, never in place of it."""
    path = Path(path).expanduser()
    try:
        path.stat()
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise error(f"{path} is a symbolic link that leads back to itself (a symlink loop): point it at a real "
                        f"folder (ln -sfn FOLDER {path}) or pass that folder instead") from None
    return Path(os.path.realpath(path))


def check_output(folder, force=False):
    """Refuse an --out we must not or cannot write, before any training is spent on it; finish an interrupted write.

    An hfcf model folder is updated in place of its model files: anything else in it (a `.git` folder, notes) is
    kept. A folder that is not an hfcf model folder needs --force, and is refused even then when it holds files
    with the model's names, which hfcf would overwrite.
    """
    folder = real_folder(folder, DataError)
    recover(folder)
    if folder.exists() and not folder.is_dir():
        raise DataError(f"--out {folder} is a file, not a folder; choose another --out")
    if folder.is_dir() and _user_entries(folder) and not is_model_folder(folder):
        clashes = sorted(name for name in model_files() if (folder / name).exists())
        if clashes:
            raise DataError(f"--out {folder} is not an hfcf model folder and holds {', '.join(clashes)}, which "
                            "writing a model would overwrite; choose another --out")
        if not force:
            raise DataError(f"--out {folder} exists and is not an hfcf model folder; choose another --out, or pass "
                            "--force to write the model files into it (its other files are kept)")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryDirectory(dir=folder if folder.is_dir() else folder.parent).cleanup()
    except OSError as err:
        raise DataError(f"cannot write --out {folder}: {err.strerror or err}; choose a writable folder") from None


def _user_entries(folder):
    """What `folder` holds besides the hidden folders of a write under way."""
    return [entry for entry in folder.iterdir() if not entry.name.startswith(_TEMPORARY)]


def save(folder, config, users, items, item_counts, weights, card):
    """Write the model files into `folder` (the one a symlink points at), leaving the folder itself, its
    permissions and every other file in it alone. They are built in a hidden folder inside it, then renamed over
    the old ones, so a failure before that leaves the previous model, and a crash during it is finished by `recover`.
    """
    folder = real_folder(folder, DataError)
    if folder.exists() and not folder.is_dir():
        raise DataError(f"{folder} is a file, not a folder; choose another --out")
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    with _writing(folder, wait=True):
        _recover(folder)
        try:
            ready = _build(folder, config, users, items, item_counts, weights, card)
        except BaseException:
            if created:
                with suppress(OSError):
                    folder.rmdir()  # empty again: a failed first write leaves nothing behind
            raise
        _commit(ready, folder)
    return folder


def _build(folder, config, users, items, item_counts, weights, card):
    """The new model files in a hidden `_BUILDING` folder inside `folder`, renamed `_READY` once all are written."""
    building = Path(tempfile.mkdtemp(prefix=_BUILDING, dir=folder))
    try:
        config = json.loads(json.dumps(config))  # a copy we may add hashes to
        vocab_text = json.dumps({"users": users.keys, "items": items.keys,
                                 "item_counts": list(map(int, item_counts))}) + "\n"
        config["vocab_sha256"] = hashlib.sha256(vocab_text.encode()).hexdigest()
        for kind, state in weights.items():
            path = building / KINDS[kind].weights_file
            state = {name: np.asarray(as_numpy(value), order="C") for name, value in state.items()}
            _save_weights(state, path, {"format": "pt", "hfcf_format_version": str(FORMAT_VERSION),
                                        "hfcf_settings_sha256": settings_digest(config, kind)})
            config["models"][kind].update(file=path.name, sha256=sha256(path))
        (building / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (building / "vocab.json").write_text(vocab_text)
        (building / "README.md").write_text(card)
        for path in building.iterdir():
            os.chmod(path, _file_mode(folder / path.name))
        ready = building.with_name(_READY + building.name[len(_BUILDING):])
        os.replace(building, ready)
        return ready
    except OSError as err:
        shutil.rmtree(building, ignore_errors=True)
        advice = ("free some space, or write to another disk (train.py --out)" if err.errno in _FULL else
                  "write to a folder you can (train.py --out)")
        raise ArtifactError(f"could not write the model files into {folder}: {err.strerror or err}. Nothing there "
                            f"was changed (a previous model is kept); {advice}, and train again") from None
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise


def _save_weights(state, path, metadata):
    """safetensors' save_file, its I/O failures (a full disk) raised as the OSError they are."""
    try:
        save_file(state, path, metadata=metadata)
    except SafetensorError as err:
        code = re.search(r"\(os error (\d+)\)", str(err))  # how Rust's std::io::Error ends
        if code is None:
            raise
        raise OSError(int(code[1]), os.strerror(int(code[1])), str(path)) from None


def settings_digest(config, kind):
    """sha256 of what rebuilds `kind`'s module: its config.json entry (less the weights' own file name and hash,
    written after the weights are), the rating range and the format version. Stored in the weights' metadata,
    so an edited entry is caught before it is used; other edits (dropping another model, the dataset's notes)
    do not touch it."""
    settings = {key: value for key, value in config["models"][kind].items() if key not in ("sha256", "file")}
    core = {"settings": settings, "y_range": config.get("y_range"), "format_version": config.get("format_version")}
    return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()


def _file_mode(path):
    """The mode to give a file written at `path`: the one it has, else its folder's, no wider than the umask allows
    and without execute bits (a private folder gets private files; a new folder gets the usual 0644)."""
    if path.exists():
        return path.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return path.parent.stat().st_mode & 0o666 & ~umask


def _commit(ready, folder):
    """Rename the files of `ready` into `folder`, config.json last (it names the weights then in place), remove
    the previous model's weights that the new config.json does not list, then `ready`. Run again after a crash,
    it finishes the job."""
    if (ready / "config.json").exists():  # else a crash came after the last rename: only `ready` is left
        listed = json.loads((ready / "config.json").read_text())["models"]
        for path in ready.iterdir():
            if path.name != "config.json":
                os.replace(path, folder / path.name)
        for kind in set(KINDS) - set(listed):
            (folder / KINDS[kind].weights_file).unlink(missing_ok=True)
        os.replace(ready / "config.json", folder / "config.json")
    ready.rmdir()


@contextmanager
def _writing(folder, wait):
    """Hold the write lock of `folder` (flock on the directory itself: no lock file to leave behind).

    A writer waits for it; a reader that would recover leftovers only tries, and yields False when a write is
    under way, so it never removes a folder being built. The kernel drops the lock when its process dies, even
    by kill -9, so leftovers found with the lock free are a dead write's.
    """
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(descriptor)  # closing releases the lock


def leftovers(folder):
    """(`_READY`*, `_BUILDING`*) folders an interrupted write left inside `folder`: complete, and half-built."""
    folder = Path(folder)
    if not folder.is_dir():
        return [], []
    return tuple(sorted(path for path in folder.glob(f"{prefix}*") if path.is_dir())
                 for prefix in (_READY, _BUILDING))


def recover(folder):
    """Finish a write that was interrupted: a complete new model goes into place; a half-built one is removed (the
    previous model stays). Does nothing while another process is writing `folder`. Returns True when something was
    recovered."""
    folder = real_folder(folder)
    if leftovers(folder) == ([], []):
        return False
    with _writing(folder, wait=False) as free:
        return free and _recover(folder)


def _recover(folder):
    """`recover` with the write lock held."""
    readies, buildings = leftovers(folder)
    for ready in readies:
        _commit(ready, folder)
    for building in buildings:
        shutil.rmtree(building, ignore_errors=True)
    return bool(readies or buildings)


def load(folder):
    """Load and verify a model folder; anything off raises ArtifactError naming the file and the problem."""
    folder = Path(folder)
    recover(folder)  # an interrupted write may have left a complete new model inside it, to put in place
    if not folder.is_dir():
        raise ArtifactError(f"model folder {folder} does not exist")
    names = {path.name for path in folder.iterdir()}
    if not names & set(weight_files().values()):
        pickles = sorted(name for name in names if name.endswith(PICKLE_SUFFIXES))
        found = f" (it holds {', '.join(pickles)})" if pickles else ""
        raise ArtifactError(f"{folder} holds no .safetensors weights{found}; hfcf never loads pickle files. "
                            "Re-export the model with hfcf's train.py")
    config = _read_json(folder / "config.json")
    _check_config(config)
    vocab = _read_json(folder / "vocab.json")
    recorded = config.get("vocab_sha256")  # absent from folders written before hfcf recorded it
    if recorded is not None and sha256(folder / "vocab.json") != recorded:
        raise ArtifactError(f"{folder / 'vocab.json'} does not match the sha256 in config.json: edited or corrupt, "
                            "so its titles and ids cannot be trusted to label the embedding rows")
    users, items, item_counts = _check_vocab(vocab)
    weights = {kind: _load_weights(folder, kind, config, users, items) for kind in config["models"]}
    return ModelFolder(folder, config, users, items, weights, item_counts)


def _read_json(path):
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{path.name} is missing from {path.parent}") from None
    except (OSError, ValueError) as err:
        raise ArtifactError(f"{path.name} is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise ArtifactError(f"{path.name} must hold a JSON object")
    return value


def _check_config(config):
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(f"config.json has format_version {version!r}; this hfcf reads version "
                            f"{FORMAT_VERSION}. Upgrade hfcf or re-export the model")
    y_range = config.get("y_range")
    if not (isinstance(y_range, list) and len(y_range) == 2 and all(isinstance(v, (int, float)) for v in y_range)
            and all(map(math.isfinite, y_range)) and y_range[0] < y_range[1]):
        raise ArtifactError(f"config.json y_range must be [low, high] with low < high (got {y_range!r})")
    models = config.get("models")
    if not isinstance(models, dict) or not models or set(models) - set(KINDS):
        raise ArtifactError(f"config.json models must name some of {list(KINDS)} (got {models!r})")


def _check_vocab(vocab):
    users, items = vocab.get("users"), vocab.get("items")
    for name, keys in (("users", users), ("items", items)):
        if not isinstance(keys, list) or len(keys) < 2 or keys[0] != NA:
            raise ArtifactError(f"vocab.json {name} must be a list starting with {NA!r} and one or more entries")
        if len(set(map(str, keys))) != len(keys):
            raise ArtifactError(f"vocab.json {name} holds duplicates")
    counts = vocab.get("item_counts")
    if counts is not None and not (isinstance(counts, list) and len(counts) == len(items)
                                   and all(isinstance(c, int) and c >= 0 for c in counts)):
        raise ArtifactError("vocab.json item_counts must hold one count (a whole number >= 0) per item")
    return UserVocab(users), ItemVocab(items), counts


_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64", "I8": "int8", "I16": "int16",
           "I32": "int32", "I64": "int64", "U8": "uint8", "BOOL": "bool"}  # safetensors' header names


def _load_weights(folder, kind, config, users, items):
    """One model's verified weights: the file's hash, then its header against the tensors the config's settings
    need (no tensor allocated yet), then the values."""
    settings = config["models"][kind]
    path = folder / KINDS[kind].weights_file
    if not path.is_file():
        raise ArtifactError(f"{path.name} is missing from {folder}, though config.json lists the {kind} model")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != settings.get("sha256"):
        raise ArtifactError(f"{path} does not match the sha256 in config.json: the file is corrupt, truncated or "
                            "from another commit")
    header = _read_header(path.name, data)
    written_for = (header.get("__metadata__") or {}).get("hfcf_settings_sha256")  # absent before hfcf wrote it
    if written_for is not None and written_for != settings_digest(config, kind):
        raise ArtifactError(f"the {kind} entry of config.json in {folder} is not the one {path.name} was written "
                            "with (edited, or from another model): its settings cannot be trusted to rebuild it")
    try:
        expected = KINDS[kind].tensors(settings, len(users), len(items))
    except (KeyError, TypeError, ValueError) as err:
        raise ArtifactError(f"config.json {kind} settings cannot build the model: {err!r}") from None
    stored = {key: entry for key, entry in header.items() if key != "__metadata__"}
    missing, extra = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
    if missing or extra:
        raise ArtifactError(f"{path.name} keys do not match the {kind} model: missing {missing}, extra {extra}")
    for key, entry in stored.items():
        want_dtype, want_shape = expected[key]
        dtype, shape = _DTYPES.get(entry.get("dtype")), tuple(entry.get("shape", ()))
        if dtype != want_dtype or shape != want_shape:
            raise ArtifactError(f"{path.name} {key} is {dtype or entry.get('dtype')} {shape}; the config and vocab "
                                f"({len(users)} users, {len(items)} items) need {want_dtype} {want_shape}")
    try:
        state = load_safetensors(data)
    except Exception as err:  # safetensors raises its own error types for malformed data
        raise ArtifactError(f"{path.name} is not a valid safetensors file: {err}") from None
    for key, array in state.items():
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise ArtifactError(f"{path.name} {key} holds NaN or infinite values")
    return state


def _read_header(name, data):
    """A .safetensors header, after checking its claims against the file's real size."""
    if len(data) < 8:
        raise ArtifactError(f"{name} is truncated ({len(data)} bytes)")
    (header_size,) = struct.unpack("<Q", data[:8])
    if header_size > min(_MAX_HEADER, len(data) - 8):
        raise ArtifactError(f"{name} header claims {header_size:,} bytes but the file has {len(data):,}: "
                            "truncated or corrupt")
    try:
        header = json.loads(data[8:8 + header_size])
        end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as err:
        raise ArtifactError(f"{name} has an unreadable header: {err!r}") from None
    if 8 + header_size + end != len(data):
        raise ArtifactError(f"{name} holds {len(data):,} bytes but its header describes "
                            f"{8 + header_size + end:,}: truncated or corrupt")
    return header
