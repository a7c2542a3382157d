"""Command-line tools that need no training: publish a model folder that train.py wrote; link a Space to it.

    python -m hfcf push FOLDER --repo-id you/name [--private]
    python -m hfcf link-space you/name [--readme README.md]

Exit status: 0 done, 2 bad input (nothing sent), 1 a Hub failure.
"""
import argparse
import sys
from pathlib import Path

from .errors import ArtifactError, DataError, HfcfError


def parser():
    p = argparse.ArgumentParser(prog="python -m hfcf", description=__doc__.split("\n\n")[0])
    commands = p.add_subparsers(dest="command", required=True)
    push = commands.add_parser("push", help="publish a model folder to the Hub in one commit, without retraining")
    push.add_argument("folder", help="a model folder written by train.py (checked before anything is sent)")
    push.add_argument("--repo-id", required=True, help="Hub repo to push to, e.g. you/movielens-cf")
    push.add_argument("--private", action="store_true",
                      help="create the repo as private; refused when it already exists and is public")
    link = commands.add_parser("link-space", help="write a model repo into a Space README's `models:` front matter")
    link.add_argument("repo_id", help="the model repo the Space serves, e.g. you/movielens-cf")
    link.add_argument("--readme", default="README.md", help="the Space's README.md (default: ./README.md)")
    return p


def link_space(repo_id, readme):
    """Point the Space's front matter at the model it serves (`models:` links it on the Hub), keeping the rest."""
    from . import artifacts, card, hub

    name, _ = hub.split_revision(repo_id)
    hub.check_repo_id(name, "the model repo id")
    readme = Path(readme)
    if readme.is_dir():
        raise DataError(f"{readme} is a folder: pass the Space's README file with --readme {readme / 'README.md'}")
    try:
        text = card.decode(readme.read_bytes(), readme.name, "pass the Space's README with --readme")
        artifacts.write_text_atomically(readme, card.with_models(text, name, readme.name))
    except FileNotFoundError:
        raise DataError(f"{readme} does not exist; pass the Space's README with --readme") from None
    except OSError as err:
        raise DataError(f"cannot update {readme}: {err.strerror or err}; pass the Space's README with --readme") \
            from None
    print(f"{readme}: models: [{name}]. On the Space, also set the variable HFCF_MODEL={repo_id} "
          "(Settings, Variables) so the app serves it.")


def push(folder, repo_id, private):
    from . import artifacts, hub

    hub.check_can_push(repo_id, private)
    result = hub.push(folder, repo_id, private=private)
    readme = Path(folder) / "README.md"
    if result.card_as_is:
        print(f"{readme} was edited after training: published as it is", file=sys.stderr)
    else:  # only now that the Hub holds it: the local card names the repo it was published to
        artifacts.write_text_atomically(readme, result.card)
    print(f"pushed commit {result.commit_sha} to {result.repo_url}\n{result.url}\n"
          f"To serve it from a Space: python -m hfcf link-space {repo_id}, and set HFCF_MODEL={repo_id} there")


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        if args.command == "push":
            push(args.folder, args.repo_id, args.private)
        else:
            link_space(args.repo_id, args.readme)
    except (DataError, ArtifactError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except HfcfError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
