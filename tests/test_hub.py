"""hfcf.hub against the in-memory Hub of tests/hub_server.py: no request leaves 127.0.0.1."""

import hashlib
import shutil
import socket
from pathlib import Path

import pytest
from huggingface_hub import constants

from hfcf import artifacts, hub
from hfcf.errors import ArtifactError, DataError, HubError
from hub_server import HubServer

TOKEN = "hf_test_token_4f1c9a7e2b"
REPO = "alice/movielens-cf"


def closed_port_endpoint():
    with socket.socket() as sock:  # bound then released: nothing listens there afterwards
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture(autouse=True)
def hub_env(tmp_path, monkeypatch):
    """Every test here gets `private_hub`."""
    private_hub(tmp_path, monkeypatch)


def private_hub(tmp_path, monkeypatch):
    """A private HF cache and home, a token in HF_TOKEN, and no way to reach the real Hub.

    huggingface_hub reads these variables at import, so its constants are patched as well. Xet is off because
    the client would pick it on its own and the test server only speaks git-LFS; telemetry is off because it
    would otherwise fetch an agent registry from the default endpoint. That default endpoint is a closed
    port, so a call that ignored the `endpoint=` given to hfcf.hub fails instead of reaching huggingface.co.
    """
    home = tmp_path / "hf-home"
    settings = {  # environment variable -> (huggingface_hub.constants name, value)
        "HF_HOME": ("HF_HOME", str(home)),
        "HF_HUB_CACHE": ("HF_HUB_CACHE", str(tmp_path / "hf-cache")),
        "HF_TOKEN_PATH": ("HF_TOKEN_PATH", str(home / "token")),
        "HF_STORED_TOKENS_PATH": ("HF_STORED_TOKENS_PATH", str(home / "stored_tokens")),
        "HF_ENDPOINT": ("ENDPOINT", closed_port_endpoint()),
        "HF_HUB_DISABLE_TELEMETRY": ("HF_HUB_DISABLE_TELEMETRY", True),
        "HF_HUB_DISABLE_XET": ("HF_HUB_DISABLE_XET", True),
        "HF_HUB_OFFLINE": ("HF_HUB_OFFLINE", False),
    }
    for variable, (constant, value) in settings.items():
        monkeypatch.setenv(variable, str(int(value)) if isinstance(value, bool) else value)
        monkeypatch.setattr(constants, constant, value)
    # Derived from ENDPOINT at import; hf_hub_url only swaps in `endpoint=` when a URL starts with ENDPOINT.
    template = constants.ENDPOINT + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setenv("HF_TOKEN", TOKEN)


@pytest.fixture
def server():
    with HubServer(token=TOKEN, user="alice") as running:
        yield running


@pytest.fixture
def model_folder(synthetic_model, tmp_path):
    """A trained folder whose card names REPO already (so pushing there leaves it as it is), and two files that
    are not the model's."""
    from hfcf import artifacts, card

    folder = shutil.copytree(synthetic_model[0], tmp_path / "model")
    readme = folder / "README.md"
    readme.write_text(card.card_for_repo(artifacts.load(folder), REPO, readme.read_text()))
    (folder / "notes.txt").write_text("not part of the model")
    (folder / "weights.bin").write_bytes(b"a pickle that must never be published")
    return folder


def model_bytes(folder):
    return {name: (folder / name).read_bytes() for name in artifacts.model_files()}


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def chain(err):
    """`err` and everything chained to it, causes and contexts alike."""
    pending, seen = [err], set()
    while pending:
        err = pending.pop()
        if err is not None and id(err) not in seen:
            seen.add(id(err))
            yield err
            pending += [err.__cause__, err.__context__]


def test_push_commits_exactly_the_model_files_with_weights_through_lfs(server, model_folder):
    result = hub.push(model_folder, REPO, endpoint=server.endpoint)

    files = server.files(REPO)
    assert files.pop(".gitattributes")  # the Hub's initial commit
    assert files == model_bytes(model_folder)
    uploaded = {path.rsplit("/", 1)[1] for method, path in server.requests if method == "PUT"}
    weights = {sha256((model_folder / name).read_bytes()) for name in artifacts.weight_files().values()}
    assert uploaded == weights  # the .safetensors and nothing else went through LFS; JSON and README went inline
    assert ("POST", f"/{REPO}.git/info/lfs/objects/batch") in server.requests
    assert [path for method, path in server.requests if path.startswith("/api/models/") and "/commit/" in path] == [
        f"/api/models/{REPO}/commit/main"
    ]
    assert result.commit_sha == server.head(REPO) == server.commits(REPO)[0]
    assert REPO in result.url and result.commit_sha in result.url
    assert result.repo_url == f"{server.endpoint}/{REPO}"


def test_second_push_of_the_same_folder_makes_no_commit(server, model_folder):
    first = hub.push(model_folder, REPO, endpoint=server.endpoint)
    commits, seen = server.commits(REPO), len(server.requests)

    second = hub.push(model_folder, REPO, endpoint=server.endpoint)

    assert second.commit_sha == first.commit_sha
    assert server.commits(REPO) == commits
    assert not any(method == "PUT" or "/commit/" in path for method, path in server.requests[seen:])
    assert {k: v for k, v in server.files(REPO).items() if k != ".gitattributes"} == model_bytes(model_folder)


def test_push_with_a_wrong_token_says_how_to_log_in_and_never_shows_the_token(server, model_folder, monkeypatch):
    wrong = "hf_wrong_token_9d8c7b6a5f"
    monkeypatch.setenv("HF_TOKEN", wrong)
    server.echo_credentials = True  # the server quotes the token back: hfcf must still not show it

    with pytest.raises(HubError) as caught:
        hub.push(model_folder, REPO, endpoint=server.endpoint)

    assert "401" in str(caught.value) and "hf auth login" in str(caught.value)
    for err in chain(caught.value):
        assert wrong not in str(err) and wrong not in repr(err)
    assert REPO not in server.repos


def test_push_to_someone_elses_namespace_is_a_permission_error(server, model_folder):
    with pytest.raises(HubError, match="No write access to the namespace 'bob'"):
        hub.push(model_folder, "bob/movielens-cf", endpoint=server.endpoint)


def test_push_refuses_a_folder_without_the_model_files(server, tmp_path):
    with pytest.raises(ArtifactError, match="holds no .safetensors weights"):
        hub.push(tmp_path, REPO, endpoint=server.endpoint)
    with pytest.raises(ArtifactError, match="missing does not exist"):
        hub.push(tmp_path / "missing", REPO, endpoint=server.endpoint)
    assert server.requests == []


def test_private_repo_needs_a_token_to_download(server, model_folder, monkeypatch):
    hub.push(model_folder, REPO, private=True, endpoint=server.endpoint)
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(HubError, match="private repo also needs a token"):
        hub.download(REPO, endpoint=server.endpoint)

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert hub.download(REPO, endpoint=server.endpoint)[1] == server.head(REPO)


def test_download_of_a_missing_repo_names_it(server):
    with pytest.raises(HubError, match="alice/no-such-model not found"):
        hub.download("alice/no-such-model", endpoint=server.endpoint)


def test_download_of_a_missing_revision_names_it(server, model_folder):
    hub.push(model_folder, REPO, endpoint=server.endpoint)
    with pytest.raises(HubError, match="Revision 'v9' not found"):
        hub.download(f"{REPO}@v9", endpoint=server.endpoint)


@pytest.mark.parametrize("target", [REPO, f"{REPO}@{'a' * 40}"])
def test_download_from_an_unreachable_hub_fails_at_once(target, caplog):
    endpoint = closed_port_endpoint()
    with pytest.raises(HubError, match=f"could not be reached at {endpoint}"):
        hub.download(target, endpoint=endpoint)
    assert "Retrying" not in caplog.text  # no backoff: huggingface_hub's listing call would retry for ~20 s


def test_download_pins_one_commit_and_never_fetches_pickle(server, model_folder):
    first = hub.push(model_folder, REPO, endpoint=server.endpoint)
    old = model_bytes(model_folder)
    (model_folder / "README.md").write_text((model_folder / "README.md").read_text() + "\nA second revision.\n")
    hub.push(model_folder, REPO, endpoint=server.endpoint)
    latest = server.add_files(REPO, {"pytorch_model.bin": b"pickle"}, message="add a pickle")

    pinned_folder, pinned_sha = hub.download(f"{REPO}@{first.commit_sha}", endpoint=server.endpoint)
    latest_folder, latest_sha = hub.download(REPO, endpoint=server.endpoint)

    assert pinned_sha == first.commit_sha and model_bytes(pinned_folder) == old
    assert latest_sha == latest and model_bytes(latest_folder) == model_bytes(model_folder)
    assert not (latest_folder / "pytorch_model.bin").exists()
    assert not [path for _, path in server.requests if path.endswith(".bin")]


def test_download_refuses_a_repo_with_only_pickle_weights(server):
    server.add_files("alice/legacy", {"pytorch_model.bin": b"pickle", "model.pkl": b"pickle", "config.json": b"{}"})

    with pytest.raises(ArtifactError, match=r"no \.safetensors weights .*pytorch_model\.bin"):
        hub.download("alice/legacy", endpoint=server.endpoint)
    assert not [path for _, path in server.requests if path.endswith((".bin", ".pkl"))]


@pytest.mark.parametrize("offline_mode", [True, False], ids=["HF_HUB_OFFLINE", "hub-stopped"])
def test_download_uses_the_cache_when_the_hub_is_out_of_reach(server, model_folder, monkeypatch, offline_mode):
    hub.push(model_folder, REPO, endpoint=server.endpoint)
    folder, sha = hub.download(REPO, endpoint=server.endpoint)
    server.close()
    seen = len(server.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", str(int(offline_mode)))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline_mode)

    assert hub.download(REPO, endpoint=server.endpoint) == (folder, sha)
    assert hub.download(f"{REPO}@{sha}", endpoint=server.endpoint) == (folder, sha)
    assert len(server.requests) == seen
    assert model_bytes(folder) == model_bytes(model_folder)


@pytest.mark.parametrize("target", [REPO, f"{REPO}@{'b' * 40}"])
def test_download_offline_without_a_cached_copy_says_so(server, monkeypatch, target):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubError, match=r"not in the local cache and offline mode is on \(HF_HUB_OFFLINE=1\)"):
        hub.download(target, endpoint=server.endpoint)
    assert server.requests == []


def test_split_revision():
    assert hub.split_revision("alice/cf@v1") == ("alice/cf", "v1")
    assert hub.split_revision("alice/cf") == ("alice/cf", None)
    with pytest.raises(DataError, match="owner/name@revision"):
        hub.split_revision("alice/cf@")


# A real model folder written by train.py, through the Hub and back into a Recommender.

def use_endpoint(monkeypatch, endpoint):
    """Point huggingface_hub's default endpoint at the test server, as HF_ENDPOINT would before import."""
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")


def test_trained_folder_round_trips_pinned_to_a_commit(server, synthetic_model, tmp_path, monkeypatch):
    import shutil

    import numpy as np

    from hfcf import Recommender

    use_endpoint(monkeypatch, server.endpoint)
    out = synthetic_model[0]
    first = hub.push(out, REPO)
    assert server.files(REPO).keys() - {".gitattributes"} == {p.name for p in out.iterdir()}
    changed = tmp_path / "changed"
    shutil.copytree(out, changed)
    (changed / "README.md").write_text((out / "README.md").read_text() + "\nSecond revision.\n")
    second = hub.push(changed, REPO)
    assert second.commit_sha != first.commit_sha

    pinned = Recommender.from_pretrained(f"{REPO}@{first.commit_sha}")
    latest = Recommender.from_pretrained(REPO, model="nn")
    local = Recommender.from_pretrained(out)
    assert (pinned.source, pinned.revision) == (REPO, first.commit_sha)
    assert latest.revision == second.commit_sha
    assert "Second revision" not in (pinned.folder.path / "README.md").read_text()
    np.testing.assert_array_equal(pinned.predict_all(), local.predict_all())

    server.close()  # from here on only the cache can answer
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    offline = Recommender.from_pretrained(REPO, revision=first.commit_sha)
    np.testing.assert_array_equal(offline.predict_all(), local.predict_all())
    assert Recommender.from_pretrained(REPO, model="nn").revision == second.commit_sha


def test_train_py_push_prints_the_commit_and_never_the_token(server, monkeypatch, tmp_path, capsys):
    pytest.importorskip("fastai")
    import train

    use_endpoint(monkeypatch, server.endpoint)
    code = train.main(["--data", "synthetic", "--epochs", "1", "--out", str(tmp_path / "model"), "--push",
                       "--repo-id", "alice/cli-model"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    head = server.head("alice/cli-model")
    assert f"pushed commit {head}" in printed.out and TOKEN not in printed.out + printed.err
    assert server.files("alice/cli-model").keys() - {".gitattributes"} == set(artifacts.model_files())


def test_train_py_push_without_a_token_stops_before_training(monkeypatch, tmp_path, capsys):
    import train

    monkeypatch.delenv("HF_TOKEN")
    code = train.main(["--data", "synthetic", "--out", str(tmp_path / "model"), "--push", "--repo-id", "alice/x"])
    assert code == 2 and "hf auth login" in capsys.readouterr().err
    assert not (tmp_path / "model").exists()


# --- nothing published by mistake, nothing trained for nothing, a damaged cache repaired ---------------
def test_private_push_to_an_existing_public_repo_is_refused_before_training(server, monkeypatch, tmp_path, capsys):
    """It used to exit 0 and leave the repo public."""
    import train

    use_endpoint(monkeypatch, server.endpoint)
    server.create_repo(REPO, private=False)
    commits = server.commits(REPO)
    code = train.main(["--data", "synthetic", "--epochs", "1", "--out", str(tmp_path / "model"), "--push",
                       "--repo-id", REPO, "--private"])
    err = capsys.readouterr().err
    assert code == 1 and "already exists and is public" in err and "make the repo private first" in err
    assert not (tmp_path / "model").exists()  # refused before training
    assert server.commits(REPO) == commits and not server.repos[REPO].private


def test_hub_push_itself_refuses_private_for_a_public_repo(server, model_folder):
    server.create_repo(REPO, private=False)
    with pytest.raises(HubError, match="already exists and is public"):
        hub.push(model_folder, REPO, private=True, endpoint=server.endpoint)
    assert len(server.commits(REPO)) == 1  # the Hub's initial commit only
    hub.push(model_folder, "alice/new-private", private=True, endpoint=server.endpoint)
    assert server.repos["alice/new-private"].private


def test_a_refused_token_stops_train_py_before_training(server, monkeypatch, tmp_path, capsys):
    """A 401 came only after training."""
    import train

    use_endpoint(monkeypatch, server.endpoint)
    monkeypatch.setenv("HF_TOKEN", "hf_wrong_token_0000")
    code = train.main(["--data", "synthetic", "--out", str(tmp_path / "model"), "--push", "--repo-id", REPO])
    printed = capsys.readouterr()
    assert code == 1 and "401" in printed.err and "hf auth login" in printed.err
    assert "epoch" not in printed.out and not (tmp_path / "model").exists()


def test_a_trained_folder_is_published_without_retraining(server, synthetic_model, monkeypatch, tmp_path, capsys):
    """`python -m hfcf push` publishes what train.py wrote; a push failing after training says how."""
    import shutil

    import train
    from hfcf.__main__ import main as hfcf_main

    use_endpoint(monkeypatch, server.endpoint)
    out = shutil.copytree(synthetic_model[0], tmp_path / "model")
    assert "you/name" in (out / "README.md").read_text()  # trained without --repo-id: a placeholder
    assert hfcf_main(["push", str(out), "--repo-id", REPO]) == 0
    printed = capsys.readouterr().out
    assert f"pushed commit {server.head(REPO)}" in printed and f"python -m hfcf link-space {REPO}" in printed
    card = (out / "README.md").read_text()
    assert "you/name" not in card and f'from_pretrained("{REPO}")' in card and f"\n# {REPO}\n" in card
    assert server.files(REPO)["README.md"] == card.encode()  # the Hub holds the card with its own repo id
    assert hfcf_main(["push", str(out), "--repo-id", "alice/second"]) == 0  # re-rendered for another repo
    assert 'from_pretrained("alice/second")' in (out / "README.md").read_text()
    (out / "README.md").write_text((out / "README.md").read_text() + "\nMy own notes.\n")
    assert hfcf_main(["push", str(out), "--repo-id", "alice/third"]) == 0  # an edited card is published as is
    assert "My own notes" in (out / "README.md").read_text() and "edited after training" in capsys.readouterr().err
    (out / "vocab.json").write_text((out / "vocab.json").read_text().replace("Cluster", "Klaster"))
    assert hfcf_main(["push", str(out), "--repo-id", "alice/other"]) == 2  # a damaged folder is not published
    assert "vocab.json does not match" in capsys.readouterr().err and "alice/other" not in server.repos

    def refused(*args, **kwargs):
        raise HubError("The Hub at x answered 500 for alice/cf: try later")
    monkeypatch.setattr(hub, "push", refused)
    code = train.main(["--data", "synthetic", "--epochs", "1", "--out", str(tmp_path / "new"), "--push",
                       "--repo-id", REPO])
    assert code == 1
    assert f"publish it without retraining: python -m hfcf push {tmp_path / 'new'} --repo-id {REPO}" in \
        capsys.readouterr().err


def test_a_damaged_cached_file_is_named_and_force_download_repairs_it(server, synthetic_model, monkeypatch):
    """One byte changed in the cache made every later load fail with no way out."""
    from hfcf import Recommender

    use_endpoint(monkeypatch, server.endpoint)
    hub.push(synthetic_model[0], REPO)
    folder, sha = hub.download(REPO)
    cached = (folder / "dot.safetensors").resolve()
    data = bytearray(cached.read_bytes())
    data[-1] ^= 1
    cached.write_bytes(bytes(data))
    with pytest.raises(ArtifactError) as caught:
        Recommender.from_pretrained(REPO)
    assert "dot.safetensors" in str(caught.value) and "force_download=True" in str(caught.value)
    assert str(folder) in str(caught.value)
    repaired = Recommender.from_pretrained(REPO, force_download=True)
    assert repaired.revision == sha and repaired.recommend(repaired.users.ids()[0], 3).shape[0] == 3
    assert Recommender.from_pretrained(REPO).revision == sha  # the cache is whole again


def test_link_space_writes_the_model_into_the_spaces_front_matter(tmp_path, capsys):
    from hfcf.__main__ import main as hfcf_main

    readme = tmp_path / "README.md"
    readme.write_text("---\ntitle: hfcf\nsdk: gradio\napp_file: app.py\n---\n\n# hfcf\n\nText kept.\n")
    assert hfcf_main(["link-space", "alice/cf@v1", "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "models:\n- alice/cf\n" in text and "sdk: gradio" in text and text.endswith("Text kept.\n")
    assert "HFCF_MODEL=alice/cf@v1" in capsys.readouterr().out
    assert hfcf_main(["link-space", "not a repo", "--readme", str(readme)]) == 2
    assert hfcf_main(["link-space", "alice/cf", "--readme", str(tmp_path / "missing.md")]) == 2
    assert "--readme" in capsys.readouterr().err


def test_this_repos_readme_has_no_placeholder_model():
    from huggingface_hub import SpaceCard

    readme = Path(__file__).resolve().parents[1] / "README.md"
    assert not SpaceCard.load(readme).data.models  # linked by `python -m hfcf link-space`, never a placeholder


# --- what a push publishes: the verified model files and a card, nothing a link points at -----------------------
SECRET = "hf_secret_token_of_this_machine"


@pytest.fixture
def trained_copy(synthetic_model, tmp_path, monkeypatch):
    """A copy of a trained folder to push with `python -m hfcf push`, and a secret file beside it."""
    monkeypatch.setattr(hub, "check_can_push", lambda *args, **kwargs: None)  # a bare test server has no whoami
    (tmp_path / "token").write_text(SECRET)
    return shutil.copytree(synthetic_model[0], tmp_path / "model")


def cli_push(server, monkeypatch, folder, repo=REPO):
    from hfcf.__main__ import main as hfcf_main

    use_endpoint(monkeypatch, server.endpoint)
    return hfcf_main(["push", str(folder), "--repo-id", repo])


def published_text(server, repo=REPO):
    return b"".join(server.files(repo).values()) if repo in server.repos else b""


@pytest.mark.parametrize("name", ["README.md", "config.json", "dot.safetensors"])
def test_push_refuses_a_model_file_that_is_a_link(server, trained_copy, monkeypatch, capsys, name):
    """A README linked to the token file was published with the token in it."""
    target = trained_copy.parent / "token"
    if name != "README.md":  # a link to a copy of the real file: what it points at is refused, not its content
        target = Path(shutil.copyfile(trained_copy / name, trained_copy.parent / f"elsewhere-{name}"))
    (trained_copy / name).unlink()
    (trained_copy / name).symlink_to(target)
    assert cli_push(server, monkeypatch, trained_copy) == 2
    err = capsys.readouterr().err
    assert f"{name} is a symbolic link" in err and "Traceback" not in err
    assert REPO not in server.repos and SECRET.encode() not in published_text(server)


@pytest.mark.parametrize("linked", [False, True], ids=["file", "link-to-a-secret"])
def test_push_publishes_only_the_weights_config_json_lists(server, trained_copy, monkeypatch, linked):
    """A topn.safetensors that config.json does not list was uploaded, even when it was a link to a secret."""
    import json

    config = json.loads((trained_copy / "config.json").read_text())
    del config["models"]["topn"]
    (trained_copy / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if linked:
        (trained_copy / "topn.safetensors").unlink()
        (trained_copy / "topn.safetensors").symlink_to(trained_copy.parent / "token")
    code = cli_push(server, monkeypatch, trained_copy)
    assert SECRET.encode() not in published_text(server)
    if linked:  # a link where a model file belongs is refused outright
        assert code == 2 and REPO not in server.repos
    else:
        assert code == 0
        assert set(server.files(REPO)) - {".gitattributes"} == {"README.md", "config.json", "vocab.json",
                                                                "dot.safetensors", "nn.safetensors"}


@pytest.mark.parametrize("card, message", [
    (b"---\nlicense: [mit\n---\n# My model\n", "YAML front matter of README.md does not parse"),
    (b"---\n- a list\n---\n# My model\n", "YAML front matter of README.md must be key: value lines"),
    (b"---\nlicense: mit\n---\nCaf\xe9 au lait\n", "README.md is not UTF-8 text"),
])
def test_push_of_an_unreadable_card_says_how_to_fix_it(server, trained_copy, monkeypatch, capsys, card, message):
    """A README of bad YAML or of Latin-1 bytes ended push with a traceback."""
    (trained_copy / "README.md").write_bytes(card)
    assert cli_push(server, monkeypatch, trained_copy) == 2
    err = capsys.readouterr().err
    assert message in err and "delete README.md to publish the card hfcf renders" in err
    assert REPO not in server.repos and (trained_copy / "README.md").read_bytes() == card


def test_push_of_a_folder_without_a_card_publishes_the_rendered_one(server, trained_copy, monkeypatch):
    (trained_copy / "README.md").unlink()
    assert cli_push(server, monkeypatch, trained_copy) == 0
    published = server.files(REPO)["README.md"].decode()
    assert f'from_pretrained("{REPO}")' in published and (trained_copy / "README.md").read_text() == published


def test_a_refused_push_leaves_the_local_card_as_it_was(server, trained_copy, monkeypatch, capsys):
    """A push refused with 403 left README.md rewritten for the repo it never reached."""
    before = (trained_copy / "README.md").read_bytes()
    assert cli_push(server, monkeypatch, trained_copy, "bob/movielens-cf") == 1
    assert "No write access to the namespace 'bob'" in capsys.readouterr().err
    assert (trained_copy / "README.md").read_bytes() == before


SPACE_CARD = ("---\n# the Space's settings: keep them\ntitle: hfcf  # shown on the Hub\nsdk: gradio\n"
              "models:\n- alice/old\n# end of the list\napp_file: app.py\n---\n\n# hfcf\n\nText kept.\n")


def test_link_space_keeps_the_comments_and_order_of_the_front_matter(tmp_path, capsys):
    from hfcf.__main__ import main as hfcf_main

    readme = tmp_path / "README.md"
    readme.write_text(SPACE_CARD)
    assert hfcf_main(["link-space", "alice/cf", "--readme", str(readme)]) == 0
    assert readme.read_text() == SPACE_CARD.replace("- alice/old\n", "- alice/cf\n")


@pytest.mark.parametrize("text, message", [
    (b"---\ntitle: [hfcf\n---\n# hfcf\n", "YAML front matter of README.md does not parse"),
    (b"---\ntitle: Caf\xe9\n---\n# hfcf\n", "README.md is not UTF-8 text"),
])
def test_link_space_refuses_an_unreadable_readme_and_leaves_it(tmp_path, capsys, text, message):
    from hfcf.__main__ import main as hfcf_main

    readme = tmp_path / "README.md"
    readme.write_bytes(text)
    assert hfcf_main(["link-space", "alice/cf", "--readme", str(readme)]) == 2
    assert message in capsys.readouterr().err and readme.read_bytes() == text


def test_link_space_says_what_is_wrong_with_its_arguments(tmp_path, capsys):
    from hfcf.__main__ import main as hfcf_main

    assert hfcf_main(["link-space", "alice/cf", "--readme", str(tmp_path)]) == 2
    assert f"{tmp_path} is a folder" in capsys.readouterr().err
    (tmp_path / "README.md").write_text("# hfcf\n")
    assert hfcf_main(["link-space", "alice/good@", "--readme", str(tmp_path / "README.md")]) == 2
    assert "owner/name@revision" in capsys.readouterr().err
