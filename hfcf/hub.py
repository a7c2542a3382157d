"""Publish a model folder as one Hub commit, and fetch one back pinned to a single commit.

The token is whatever huggingface_hub finds (HF_TOKEN, then the `hf auth login` cache); hfcf never takes one
as an argument and scrubs it from every error it raises. `endpoint=None` means huggingface_hub's own setting
(HF_ENDPOINT); pass another for a self-hosted mirror or a test server.
"""

import errno
import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import httpx2
from huggingface_hub import (HfApi, constants, get_cached_repo_tree, get_token, hf_hub_download, parse_hf_uri,
                             snapshot_download)
from huggingface_hub.errors import (
    CachedRepoTreeNotFoundError,
    GatedRepoError,
    HfUriError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
    RevisionResolutionError,
)

from huggingface_hub.utils import validate_repo_id

from . import artifacts, card
from .errors import ArtifactError, DataError, HfcfError, HubError

DATASET_URL = "hf://datasets/OWNER/NAME[@REVISION]/PATH"  # the one shape of ratings on the Hub hfcf reads
# What else to do when `action` fails on the Hub's side.
INSTEAD = {"push": "", "download": ", or load a local model folder", "read": ", or pass a local copy of the file"}


@dataclass(frozen=True)
class PushResult:
    repo_id: str
    commit_sha: str
    url: str  # the commit's page
    repo_url: str
    card: str  # the README.md published
    card_as_is: bool  # True: the folder's own README.md (edited by hand), not one rendered for this repo


def check_repo_id(repo_id, what="the repo id"):
    """Refuse anything but 'owner/name' (a Hub model repo id), naming the argument that holds it."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        repo_id = None
    if not repo_id or repo_id.count("/") != 1:
        raise DataError(f"{what} must look like owner/name (letters, digits, '-', '_', '.')")


def check_can_push(repo_id, private=False, endpoint=None):
    """Refuse a push that cannot work or would publish wrongly, before any training is spent on it: no or a
    malformed repo id, no token, a token the Hub refuses, or --private for a repo that exists and is public."""
    if not repo_id:
        raise DataError("--push needs --repo-id owner/name")
    check_repo_id(repo_id, "--repo-id")
    if get_token() is None:
        raise DataError("no Hugging Face token found: run `hf auth login` or set HF_TOKEN "
                        "(hfcf never takes a token on the command line)")
    api = HfApi(endpoint=endpoint)
    with _hub_errors(repo_id, None, api.endpoint, "push"):
        api.whoami()  # a 401 now, not after training
        _check_visibility(api, repo_id, private)


def _check_visibility(api, repo_id, private):
    """Refuse --private for an existing public repo: pushing would publish the model, and changing a repo's
    visibility is the owner's decision, not a side effect of a push."""
    try:
        public = not api.repo_info(repo_id, repo_type="model").private
    except RepositoryNotFoundError:
        return  # create_repo makes it with the visibility asked for
    if private and public:
        raise HubError(f"{repo_id} already exists and is public, so --private cannot keep this model private: "
                       "make the repo private first (on the Hub: Settings, Change repo visibility), or push to "
                       "another --repo-id, or drop --private to publish it publicly")


def push(folder, repo_id, *, private=False, commit_message=None, endpoint=None) -> PushResult:
    """Publish a model folder to `repo_id` in one commit: only the files artifacts.load verifies, the very bytes it
    verified, and a card that names the repo; the folder itself is left as it is. Unchanged files make no commit."""
    folder = Path(folder)
    api = HfApi(endpoint=endpoint)
    with tempfile.TemporaryDirectory(prefix="hfcf-push-") as staging:
        text, as_is = _stage(folder, Path(staging), repo_id)  # checked before a repo gets created
        with _hub_errors(repo_id, None, api.endpoint, "push"):
            _check_visibility(api, repo_id, private)
            repo_url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
            # When nothing changed, huggingface_hub skips the empty commit and returns the current head.
            commit = api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=staging,
                                       commit_message=commit_message or "Upload hfcf model")
    return PushResult(repo_id=repo_id, commit_sha=commit.oid, url=commit.commit_url, repo_url=str(repo_url),
                      card=text, card_as_is=as_is)


def _stage(folder, staging, repo_id):
    """Copy what a push publishes into `staging` and verify the copy there, so nothing is uploaded that was not
    checked, nor changed after it was: the model files config.json lists, and the card. Returns (card, as_is)."""
    artifacts.recover(folder)  # an interrupted write is finished first, as a load would
    if not folder.is_dir():
        raise ArtifactError(f"model folder {folder} does not exist: pass the folder train.py --out wrote")
    for name in artifacts.model_files():
        _copy_regular_file(folder / name, staging / name)
    try:
        loaded = artifacts.load(staging)
    except ArtifactError as err:  # name the user's folder, not the copy
        raise ArtifactError(str(err).replace(str(staging), str(folder))) from None
    listed = {*artifacts.FILES, *(artifacts.weight_files()[kind] for kind in loaded.config["models"])}
    for path in staging.iterdir():
        if path.name not in listed:  # e.g. a stale weights file of a model config.json no longer holds
            path.unlink()
    readme = staging / "README.md"
    current = card.decode(readme.read_bytes(), "README.md", card.RENDER_INSTEAD) if readme.exists() else None
    rendered = card.card_for_repo(loaded, repo_id, current)
    if rendered is None:
        return current, True
    readme.write_text(rendered, encoding="utf-8")
    return rendered, False


def _copy_regular_file(source, target):
    """Copy `source` when it is a regular file; a missing one is skipped. A symbolic link, a device or a pipe is
    refused, never followed: a link named like a model file may point at a token or a system file."""
    try:  # O_NOFOLLOW: a link put in place after a check is refused too; O_NONBLOCK: a pipe cannot hang the open
        source_file = open(os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), "rb")
    except FileNotFoundError:
        return
    except OSError as err:
        if err.errno != errno.ELOOP:
            raise ArtifactError(f"cannot read {source}: {err.strerror or err}") from None
        raise ArtifactError(f"{source.name} is a symbolic link (to {os.readlink(source)}); hfcf publishes only "
                            f"regular files, never what a link points at: replace {source} with the file itself "
                            "(train.py writes it), or remove it") from None
    with source_file:
        if not stat.S_ISREG(os.fstat(source_file.fileno()).st_mode):
            raise ArtifactError(f"{source} is not a regular file; hfcf publishes only the files train.py wrote: "
                                "replace it with such a file, or remove it")
        with open(target, "wb") as target_file:
            shutil.copyfileobj(source_file, target_file)


def split_revision(repo_id):
    """'owner/name@rev' -> ('owner/name', 'rev'); 'owner/name' -> ('owner/name', None)."""
    name, at, revision = repo_id.partition("@")
    if at and not (name and revision):
        raise DataError(f"{repo_id!r} is not 'owner/name' or 'owner/name@revision': name the repo, and after an '@' "
                        "a branch, tag or commit sha (or drop the '@')")
    return name, revision or None


def download(repo_id, revision=None, *, endpoint=None, force_download=False) -> tuple[Path, str]:
    """Fetch the model files of `repo_id` ('owner/name[@rev]') at one commit; returns (local folder, commit sha).

    Only `artifacts.model_files()` are fetched, so a pickle in the repo is never downloaded. Offline, or with the Hub out
    of reach, a copy in the local cache is used: by sha, or by branch/tag name once downloaded by that name.
    `force_download` fetches the files again over a cached (perhaps damaged) copy.
    """
    if revision is None:
        repo_id, revision = split_revision(repo_id)
    api = HfApi(endpoint=endpoint)
    fetch = dict(repo_id=repo_id, allow_patterns=list(artifacts.model_files()), endpoint=api.endpoint)
    with _hub_errors(repo_id, revision, api.endpoint, "download"):
        # One request (no retries) pins a branch or tag to a commit and notes it in the cache (refs/) for offline
        # use; with the Hub out of reach, refs/ answers instead. A full sha is taken as is.
        sha = api.resolve_revision(repo_id, revision=revision).resolved
        try:  # a commit never changes, so a complete cached copy needs no request
            if force_download:
                raise LocalEntryNotFoundError("a fresh download was asked for")
            folder = snapshot_download(revision=sha, local_files_only=True, **fetch)
        except LocalEntryNotFoundError:
            if constants.is_offline_mode():
                raise
            # Not cached: ask once without retries, so a missing commit or an unreachable Hub fails fast
            # (snapshot_download's listing call retries for ~20 s).
            api.model_info(repo_id, revision=sha)
            folder = snapshot_download(revision=sha, force_download=force_download, **fetch)
    folder = Path(folder)
    if not any((folder / name).is_file() for name in artifacts.weight_files().values()):
        try:  # snapshot_download keeps the commit's file list in the cache
            held = ", ".join(sorted(entry.path for entry in get_cached_repo_tree(repo_id, revision=sha))) or "no files"
        except CachedRepoTreeNotFoundError:
            held = "files not listed"
        raise ArtifactError(
            f"{repo_id}@{sha} holds no .safetensors weights (it has: {held}); hfcf never loads pickle (.bin/.pkl)"
        )
    return folder, sha


def is_hub_url(source):
    """True for an hf:// source: a file in a Hub repo rather than on this machine."""
    return isinstance(source, str) and source.startswith(constants.HF_PROTOCOL)


def parse_dataset_url(url):
    """`url` as huggingface_hub's HfUri, refused (DataError) unless it names one file of a dataset repo."""
    try:
        uri = parse_hf_uri(url)
    except HfUriError as err:
        problem = str(err).split(": ", 1)[-1]
        raise DataError(f"{url} is not a Hub dataset file ({problem}): write it {DATASET_URL}") from None
    if uri.type != "dataset" or not uri.path_in_repo:
        example = f"hf://datasets/{uri.id}{'@' + uri.revision if uri.revision else ''}/{uri.path_in_repo or 'PATH'}"
        what = f"a {uri.type} repo" if uri.type != "dataset" else "no file in it"
        raise DataError(f"{url} names {what}; ratings are read from one file of a dataset repo: write it "
                        f"{DATASET_URL}, e.g. {example}")
    if {".", ".."} & set(uri.path_in_repo.split("/")):  # a file of the repo, never a way out of its cache folder
        raise DataError(f"{url} has a '.' or '..' in its PATH: name the file by its path from the repo's top, "
                        f"{DATASET_URL}")
    return uri


def dataset_repo_id(source):
    """The dataset repo id ('owner/name') of an hf:// source, else None."""
    return parse_dataset_url(source).id if is_hub_url(source) else None


def dataset_file(url, *, endpoint=None) -> tuple[Path, str]:
    """The file `url` (hf://datasets/OWNER/NAME[@REVISION]/PATH) names, at the one commit its revision resolves to;
    returns (local path in the Hub cache, `url` pinned to that commit). Offline, the cache answers."""
    uri = parse_dataset_url(url)
    api = HfApi(endpoint=endpoint)
    fetch = dict(repo_id=uri.id, repo_type="dataset")
    with _hub_errors(f"datasets/{uri.id}", uri.revision, api.endpoint, "read", target=url):
        # resolve_revision notes branch -> commit in the cache (refs/), so a branch name resolves offline too;
        # a file fetched by commit is then served from the cache without a request.
        sha = api.resolve_revision(revision=uri.revision, **fetch).resolved
        try:
            path = hf_hub_download(filename=uri.path_in_repo, revision=sha, endpoint=api.endpoint, **fetch)
        except RemoteEntryNotFoundError:
            raise DataError(_missing_file(api, uri, sha)) from None
    return Path(path), replace(uri, revision=sha).to_uri()


def _missing_file(api, uri, sha):
    """Say that `uri`'s file is not in its repo at commit `sha`, with the URLs of a few files that are."""
    held = [name for name in api.list_repo_files(uri.id, repo_type="dataset", revision=sha)
            if name != ".gitattributes"]
    held.sort(key=lambda name: Path(name).name != Path(uri.path_in_repo).name)  # the same name in a folder first
    at = f"@{uri.revision}" if uri.revision else ""
    shown = ", ".join(f"hf://datasets/{uri.id}{at}/{name}" for name in held[:5]) + (", ..." if len(held) > 5 else "")
    return (f"datasets/{uri.id} has no file {uri.path_in_repo!r} at commit {sha}: "
            + (f"pass one it holds: {shown}" if held else "it holds no files; check the repo, or upload the file"))


@contextmanager
def _hub_errors(repo_id, revision, endpoint, action, target=None):
    """Turn huggingface_hub's and httpx2's exceptions into a HubError that says what to do for `action` (a key of
    INSTEAD), without the token; `target` names what a cache lacked (default: the repo at `revision`)."""
    try:
        yield
    except HfcfError:
        raise
    except Exception as err:
        explained = (_explain(e, repo_id, revision, endpoint, action, target) for e in _chain(err))
        message = next(filter(None, explained), None)
        if message is None:
            raise
        token = get_token()
        if token:
            for e in _chain(err):  # the library does not echo tokens today; make sure a chained cause never does
                e.args = tuple(a.replace(token, "***") if isinstance(a, str) else a for a in e.args)
            message = message.replace(token, "***")
        raise HubError(message) from err


def _chain(err):
    """`err`, then every exception chained to it (causes and contexts), each once."""
    seen, pending = set(), [err]
    while pending:
        err = pending.pop(0)
        if err is not None and id(err) not in seen:
            seen.add(id(err))
            yield err
            pending += [err.__cause__, err.__context__]


def _explain(err, repo_id, revision, endpoint, action, target=None):
    """A message for the first exception in a chain that hfcf knows how to explain, else None."""
    target = target or (f"{repo_id}@{revision}" if revision else repo_id)
    instead = INSTEAD[action]
    if isinstance(err, (RevisionResolutionError, LocalEntryNotFoundError)):
        offline = constants.is_offline_mode()
        reason = "offline mode is on (HF_HUB_OFFLINE=1)" if offline else f"the Hub could not be reached at {endpoint}"
        return f"{target} is not in the local cache and {reason}: download it once online{instead}"
    if isinstance(err, OfflineModeIsEnabled):
        return f"Offline mode is on (HF_HUB_OFFLINE=1), so {endpoint} was not contacted: unset it to {action}"
    if isinstance(err, (httpx2.TransportError, ConnectionError)):  # ConnectionError: hf_xet's transfers
        return (
            f"The Hub could not be reached at {endpoint} ({type(err).__name__}: {err}): check the connection and "
            f"retry{instead}"
        )
    if isinstance(err, HFValidationError):
        return f"{repo_id!r} is not a valid repo id: expected 'owner/name' or 'owner/name@revision'"
    if isinstance(err, RevisionNotFoundError):
        return f"Revision {revision!r} not found in {repo_id}: check the branch, tag or commit sha"
    if not isinstance(err, HfHubHTTPError):
        return None
    status = err.response.status_code
    if isinstance(err, GatedRepoError):  # a RepositoryNotFoundError too, though the repo exists
        return (f"{repo_id} is gated: accept its conditions on its Hub page with your account, then log in "
                f"(`hf auth login` or set HF_TOKEN){instead}")
    if isinstance(err, RepositoryNotFoundError) or status == 404:
        return (
            f"Repository {repo_id} not found at {endpoint}: check the spelling; a private repo also needs a token "
            "(`hf auth login` or set HF_TOKEN)"
        )
    if status == 401:
        return (
            f"The Hub at {endpoint} refused the credentials (401): the token is missing, invalid or expired; "
            "run `hf auth login` or set HF_TOKEN"
        )
    if status == 403:
        return (
            f"No write access to the namespace {repo_id.split('/')[0]!r} (403): check the repo id and that the "
            "token has write permission there (fine-grained tokens need it per namespace)"
        )
    return f"The Hub at {endpoint} answered {status} for {repo_id}: {err.server_message or err}"
