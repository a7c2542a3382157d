"""Command-line tools that need no training: publish a model folder that train.py wrote.

    python -m hfcf push FOLDER --repo-id you/name [--private]

Exit status: 0 pushed, 2 bad input (nothing sent), 1 a Hub failure.
"""
import argparse
import sys

from .errors import DataError, HfcfError


def parser():
    p = argparse.ArgumentParser(prog="python -m hfcf", description=__doc__.split("\n\n")[0])
    commands = p.add_subparsers(dest="command", required=True)
    push = commands.add_parser("push", help="publish a model folder to the Hub in one commit, without retraining")
    push.add_argument("folder", help="a model folder written by train.py (checked before anything is sent)")
    push.add_argument("--repo-id", required=True, help="Hub repo to push to, e.g. you/movielens-cf")
    push.add_argument("--private", action="store_true",
                      help="create the repo as private; refused when it already exists and is public")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    from . import artifacts, hub

    try:
        hub.check_can_push(args.repo_id, args.private)
        artifacts.load(args.folder)  # a corrupt or foreign folder is refused here, not published
        result = hub.push(args.folder, args.repo_id, private=args.private)
    except (DataError, artifacts.ArtifactError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except HfcfError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"pushed commit {result.commit_sha} to {result.repo_url}\n{result.url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
