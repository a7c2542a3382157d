"""A small in-memory Hub on 127.0.0.1, enough for huggingface_hub 2.4's push and download paths.

What it serves (model repos, "owner/name" ids; dataset repos read-only, kept as "datasets/owner/name"):
- GET /api/whoami-v2 (the server's user; 401 without a valid token);
- POST /api/repos/create (409 with the repo url when it exists), POST /api/validate-yaml (accepts anything);
- GET /api/models/{id}[/revision/{rev}] (id, sha, private, siblings), GET /api/models/{id}/tree/{rev}[/{path}];
- POST /api/models/{id}/preupload/{rev}: "lfs" for the usual .gitattributes patterns or binary content,
  "regular" otherwise, with the oid of the file already there (sha256 for LFS, git sha1 otherwise), which
  is how the client skips unchanged files;
- git-LFS *basic* transfer: POST /{id}.git/info/lfs/objects/batch, PUT /lfs-upload/{oid} (stands in for the
  signed storage URL; checks the sha256), POST /{id}.git/info/lfs/objects/verify;
- POST /api/models/{id}/commit/{branch} (ndjson: header, file, lfsFile, deletedFile, deletedFolder);
- HEAD/GET /{id}/resolve/{rev}/{path} with X-Repo-Commit, ETag (sha256 for LFS files, git sha1 otherwise),
  X-Linked-Etag / X-Linked-Size for LFS files, Content-Length; errors carry the Hub's X-Error-Code.
- for dataset repos: GET /api/datasets/{id}[/revision/{rev}], GET /api/datasets/{id}/tree/{rev}[/{path}] and
  HEAD/GET /datasets/{id}/resolve/{rev}/{path}, as above; a gated repo answers 403 GatedRepo to every read.
Auth: a wrong bearer token gets 401 everywhere; writes need the token and the server user's namespace (403
otherwise); private repos answer 401 RepoNotFound to anonymous reads, as the Hub does.
A new repo starts with an "initial commit" holding .gitattributes, as on the Hub; commit shas are 40 hex digits,
`main` moves, old commits stay readable by sha. Tests inspect `requests` [(method, unquoted path)], `files()`,
`commits()`, `head()` and seed repos with `add_files()` ("datasets/owner/name" for a dataset repo).

What it does NOT do: Xet (no X-Xet-* headers are sent, so downloads use plain HTTP; uploads need
HF_HUB_DISABLE_XET, because huggingface_hub 2.4 picks Xet on the client side whenever hf_xet is installed),
multipart LFS, CDN redirects, Range requests, token scopes or orgs, tags, pull requests, parentCommit checks,
rate limits, gated-repo access requests (a gated repo refuses every read), list_repo_commits, pushes to dataset
repos, space repos, README metadata validation, pagination, revisions with a slash in them (refs/convert/parquet),
folder entries in non-recursive tree listings, Parquet conversion or the dataset viewer.
"""

import base64
import fnmatch
import hashlib
import itertools
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

LFS_PATTERNS = ("*.safetensors", "*.bin", "*.pkl", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.npy", "*.zip")
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS).encode()


def git_sha1(data):
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class Blob:
    data: bytes
    lfs: bool

    @property
    def oid(self):  # what preupload and ETag report: the client compares it with its own hash
        return hashlib.sha256(self.data).hexdigest() if self.lfs else git_sha1(self.data)

    def tree_entry(self, path):
        entry = {"type": "file", "path": path, "size": len(self.data), "oid": git_sha1(self.data)}
        if self.lfs:
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.oid}\nsize {len(self.data)}\n"
            entry["oid"] = git_sha1(pointer.encode())  # git stores the pointer; the tree reports its blob id
            entry["lfs"] = {"oid": self.oid, "size": len(self.data), "pointerSize": len(pointer)}
        return entry


@dataclass
class Repo:
    private: bool
    commits: dict = field(default_factory=dict)  # sha -> {path: Blob}, oldest first; old commits stay readable
    branches: dict = field(default_factory=dict)  # name -> sha
    gated: bool = False  # reads refused with 403 GatedRepo, as for an account that has not accepted the conditions

    def files_at(self, rev):
        sha = self.branches.get(rev, rev)
        return sha, self.commits.get(sha)


class _HttpError(Exception):
    def __init__(self, status, message, code=None, headers=None):
        super().__init__(message)
        self.status = status
        self.headers = {"X-Error-Message": message} | ({"X-Error-Code": code} if code else {}) | (headers or {})


class HubServer:
    """`with HubServer(token=...) as server:` serves on `server.endpoint` and records `server.requests`."""

    def __init__(self, token, user="alice", echo_credentials=False):
        # echo_credentials: quote a rejected Authorization header in the 401 message, the worst case for a
        # client that must never show a token (the real Hub does not do this).
        self.token, self.user, self.echo_credentials = token, user, echo_credentials
        self.repos, self.lfs_objects, self.requests = {}, {}, []
        self._lock, self._counter = threading.RLock(), itertools.count()  # routes run under the lock
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.hub = self
        self.endpoint = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        serve = dict(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)  # quick close()
        self._thread = threading.Thread(**serve)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Stop listening: afterwards a client gets "connection refused"."""
        if self._thread.is_alive():
            self._httpd.shutdown()
        self._httpd.server_close()

    # -- inspection and set-up helpers for tests --------------------------------------------------------
    def files(self, repo_id, rev="main"):
        return {path: blob.data for path, blob in self.repos[repo_id].files_at(rev)[1].items()}

    def commits(self, repo_id):
        """Commit shas of the repo, newest first (the Hub's order)."""
        return list(self.repos[repo_id].commits)[::-1]

    def head(self, repo_id, branch="main"):
        return self.repos[repo_id].branches[branch]

    def create_repo(self, repo_id, private=False):
        with self._lock:
            if repo_id not in self.repos:
                self.repos[repo_id] = Repo(private)
                self._commit(repo_id, "initial commit", {".gitattributes": Blob(GITATTRIBUTES, False)})
        return self.repos[repo_id]

    def add_files(self, repo_id, files, message="add files"):
        """Commit `files` ({path: bytes}) straight into main, LFS by the same rule as preupload; returns the sha."""
        self.create_repo(repo_id)
        with self._lock:
            return self._commit(repo_id, message, {p: Blob(d, _is_lfs(p, d, len(d))) for p, d in files.items()})

    def _commit(self, repo_id, message, added, deleted=(), branch="main"):
        repo = self.repos[repo_id]
        parent = repo.branches.get(branch)
        kept = (repo.commits[parent] if parent else {}).items()
        files = {p: b for p, b in kept if not any(p == d or p.startswith(d.rstrip("/") + "/") for d in deleted)}
        files |= added
        content = f"{parent}\n{message}\n{sorted((p, b.oid) for p, b in files.items())}\n{next(self._counter)}"
        sha = hashlib.sha1(content.encode()).hexdigest()
        repo.commits[sha], repo.branches[branch] = files, sha
        return sha


def _is_lfs(path, head, size):
    """The Hub's rule of thumb: an LFS pattern from .gitattributes, binary content, or over 10 MB."""
    name = path.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(name, p) for p in LFS_PATTERNS) or b"\0" in head[:512] or size > 10 * 2**20


_ID = r"(?P<repo>[^/]+/[^/]+)"
_DATASET = r"(?P<dataset>[^/]+/[^/]+)"  # routed to the repo "datasets/" + id
_ROUTES = [  # (method, pattern, handler name, needs write access)
    ("GET", r"/api/whoami-v2", "whoami", True),
    ("POST", r"/api/repos/create", "create", True),
    ("POST", r"/api/validate-yaml", "validate_yaml", False),
    ("GET", rf"/api/models/{_ID}(?:/revision/(?P<rev>[^/]+))?", "info", False),
    ("GET", rf"/api/models/{_ID}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", "tree", False),
    ("POST", rf"/api/models/{_ID}/preupload/(?P<rev>[^/]+)", "preupload", True),
    ("POST", rf"/{_ID}\.git/info/lfs/objects/batch", "lfs_batch", True),
    ("PUT", r"/lfs-upload/(?P<oid>[0-9a-f]{64})", "lfs_put", False),  # a signed URL on the real Hub: no token
    ("POST", rf"/{_ID}\.git/info/lfs/objects/verify", "lfs_verify", True),
    ("POST", rf"/api/models/{_ID}/commit/(?P<rev>[^/]+)", "commit", True),
    ("HEAD", rf"/{_ID}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve", False),
    ("GET", rf"/{_ID}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve", False),
    ("GET", rf"/api/datasets/{_DATASET}(?:/revision/(?P<rev>[^/]+))?", "info", False),
    ("GET", rf"/api/datasets/{_DATASET}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", "tree", False),
    ("HEAD", rf"/datasets/{_DATASET}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve", False),
    ("GET", rf"/datasets/{_DATASET}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve", False),
]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection: nothing lingers in a client's pool after close()

    def log_message(self, *args):
        pass

    def do_GET(self):
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_GET

    def _dispatch(self):
        hub = self.server.hub
        url = urlsplit(self.path)
        path, self.query = unquote(url.path), parse_qs(url.query)
        hub.requests.append((self.command, path))
        self.body = self._read_body()
        try:
            for method, pattern, name, write in _ROUTES:
                match = re.fullmatch(pattern, path)
                if match and method == self.command:
                    groups = {k: v for k, v in match.groupdict().items() if v}
                    if "dataset" in groups:
                        groups["repo"] = "datasets/" + groups.pop("dataset")
                    self._authorize(groups.get("repo"), write)
                    with hub._lock:
                        return getattr(self, name)(hub, **groups)
            raise _HttpError(404, f"hub_server does not implement {self.command} {path}")
        except _HttpError as err:
            self._send(err.status, {"error": str(err)}, err.headers)

    def _read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _authorize(self, repo_id, write):
        hub, auth = self.server.hub, self.headers.get("Authorization")
        if auth is not None and auth != f"Bearer {hub.token}":
            echo = f" ({auth})" if hub.echo_credentials else ""
            raise _HttpError(401, "Invalid credentials in Authorization header" + echo)
        if auth is None and write:
            raise _HttpError(401, "You must be authenticated to write to the Hub")
        if auth is None and repo_id in hub.repos and hub.repos[repo_id].private:
            raise _HttpError(401, "Repository not found", "RepoNotFound")  # the Hub does not confirm it exists
        if repo_id in hub.repos and hub.repos[repo_id].gated:
            raise _HttpError(403, f"Access to {repo_id} is restricted: you must accept its conditions", "GatedRepo")
        if write and repo_id and repo_id.split("/")[0] != hub.user:
            raise _HttpError(403, f"You don't have the rights to write to {repo_id}")

    def _send(self, status, payload=None, headers=None, raw=None):
        data = raw if raw is not None else json.dumps(payload).encode()
        self.send_response(status)
        for key, value in ({"Content-Type": "application/json"} | (headers or {})).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _repo(self, hub, repo_id, rev=None):
        if repo_id not in hub.repos:
            raise _HttpError(404, f"Repository {repo_id} not found", "RepoNotFound")
        sha, files = hub.repos[repo_id].files_at(rev or "main")
        if files is None:
            raise _HttpError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return sha, files

    # -- routes -------------------------------------------------------------------------------------
    def whoami(self, hub):
        self._send(200, {"type": "user", "name": hub.user, "orgs": [],
                         "auth": {"type": "access_token", "accessToken": {"role": "write"}}})

    def create(self, hub):
        body = json.loads(self.body)
        owner = body.get("organization") or hub.user
        if owner != hub.user:
            raise _HttpError(403, f"You don't have the rights to create a model under the namespace {owner}")
        repo_id, exists = f"{owner}/{body['name']}", f"{owner}/{body['name']}" in hub.repos
        hub.create_repo(repo_id, private=body.get("visibility") == "private")
        error = {"error": "You already created this model repo"} if exists else {}
        self._send(409 if exists else 200, {"url": f"{hub.endpoint}/{repo_id}", "name": repo_id} | error)

    def validate_yaml(self, hub):
        self._send(200, {"errors": [], "warnings": []})

    def info(self, hub, repo, rev=None):
        sha, files = self._repo(hub, repo, rev)
        siblings = [{"rfilename": p} for p in files]
        self._send(200, {"id": repo.removeprefix("datasets/"), "sha": sha, "private": hub.repos[repo].private, "siblings": siblings})

    def tree(self, hub, repo, rev, path=""):
        _, files = self._repo(hub, repo, rev)
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        entries = [blob.tree_entry(p) for p, blob in sorted(files.items()) if p.startswith(prefix)]
        if self.query.get("recursive", ["False"])[0].lower() != "true":
            entries = [e for e in entries if "/" not in e["path"][len(prefix):]]  # no folder entries: flat repos only
        self._send(200, entries)

    def preupload(self, hub, repo, rev):
        _, files = self._repo(hub, repo, rev)
        answer = []
        for f in json.loads(self.body)["files"]:
            mode = "lfs" if _is_lfs(f["path"], base64.b64decode(f["sample"]), f["size"]) else "regular"
            old = files.get(f["path"])
            answer.append({"path": f["path"], "uploadMode": mode, "shouldIgnore": False, "oid": old and old.oid})
        self._send(200, {"files": answer})

    def lfs_batch(self, hub, repo):
        self._repo(hub, repo)
        objects = []
        for obj in json.loads(self.body)["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in hub.lfs_objects:  # no "actions": the client skips an object the Hub already has
                entry["actions"] = {
                    "upload": {"href": f"{hub.endpoint}/lfs-upload/{obj['oid']}", "header": {}},
                    "verify": {"href": f"{hub.endpoint}/{repo}.git/info/lfs/objects/verify", "header": {}},
                }
            objects.append(entry)
        self._send(200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"})

    def lfs_put(self, hub, oid):
        if hashlib.sha256(self.body).hexdigest() != oid:
            raise _HttpError(400, "sha256 of the uploaded body does not match the oid")
        hub.lfs_objects[oid] = self.body
        self._send(200, raw=b"")

    def lfs_verify(self, hub, repo):
        body = json.loads(self.body)
        if body["oid"] not in hub.lfs_objects or len(hub.lfs_objects[body["oid"]]) != body["size"]:
            raise _HttpError(404, f"LFS object {body['oid']} not found")
        self._send(200, {"success": True})

    def commit(self, hub, repo, rev):
        self._repo(hub, repo, rev)
        if rev not in hub.repos[repo].branches:
            raise _HttpError(400, f"Can only commit to a branch, not {rev}")
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        header = next(line["value"] for line in lines if line["key"] == "header")
        added, deleted = {}, []
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "file":
                added[value["path"]] = Blob(base64.b64decode(value["content"]), False)
            elif key == "lfsFile":
                if value["oid"] not in hub.lfs_objects:
                    raise _HttpError(400, f"LFS object {value['oid']} was never uploaded")
                added[value["path"]] = Blob(hub.lfs_objects[value["oid"]], True)
            elif key in ("deletedFile", "deletedFolder"):
                deleted.append(value["path"])
        sha = hub._commit(repo, header["summary"], added, deleted, branch=rev)
        url = f"{hub.endpoint}/{repo}/commit/{sha}"
        self._send(200, {"commitUrl": url, "commitOid": sha, "success": True, "pullRequestUrl": None})

    def resolve(self, hub, repo, rev, path):
        sha, files = self._repo(hub, repo, rev)
        if path not in files:
            raise _HttpError(404, f"Entry {path} not found", "EntryNotFound", {"X-Repo-Commit": sha})
        blob = files[path]
        headers = {"Content-Type": "application/octet-stream", "X-Repo-Commit": sha, "ETag": f'"{blob.oid}"'}
        if blob.lfs:
            headers |= {"X-Linked-Etag": f'"{blob.oid}"', "X-Linked-Size": str(len(blob.data))}
        self._send(200, headers=headers, raw=blob.data)
