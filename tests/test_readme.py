"""The README's code blocks work as written on an offline clone.

Python examples run against a MovieLens 100k model trained here; only what cannot exist offline is swapped: the
Hub repo id becomes the local model folder, and the app's address becomes the app this test serves. Every shell
command is parsed by the parser of the program it runs (train.py, app.py, python -m hfcf, torchrun, make), and
the Train block's lines that need no network are run with one epoch.
"""
import contextlib
import io
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ml100k_path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
# The pages the README links to for the longer stories: their commands are held to the same checks.
PAGES = README + "".join(page.read_text() for page in sorted((ROOT / "docs").glob("*.md")))


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def block_with(text):
    found = [block for block in python_blocks() if text in block]
    assert len(found) == 1, f"one README Python block should hold {text!r}"
    return found[0]


def test_every_python_block_is_run_below():
    assert len(python_blocks()) == 2


@pytest.mark.integration
def test_the_recommender_example_runs(ml100k_model):
    code = block_with("Recommender.from_pretrained").replace('"you/movielens-cf"', repr(str(ml100k_model[0])))
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    rec = namespace["rec"]
    assert rec.model == "topn" and len(rec.history(196)) > 0
    assert "because" in rec.recommend(196, n=3).columns  # after attach_history, as the comment says


@pytest.mark.integration
def test_the_gradio_client_example_runs(serve_app, ml100k_model, capsys):
    from hfcf import space

    recommenders = space.load_recommenders(str(ml100k_model[0]))
    for recommender in recommenders.values():
        recommender.attach_history(ml100k_model[3].ratings)
    url = serve_app(recommenders)
    code = block_with("gradio_client").replace('"http://127.0.0.1:7860/"', repr(url))
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "because" in printed and "user '9999' is not in this model; valid user ids are 1 to 943" in printed


def test_a_model_cards_example_runs_on_that_models_own_data(csv_model):
    """The card's snippet names a user and titles of the model's own data, not MovieLens's."""
    card = (csv_model / "model" / "README.md").read_text()
    code = re.findall(r"```python\n(.*?)```", card, flags=re.S)[0].replace('"you/name"', repr(str(csv_model / "model")))
    namespace = {}
    exec(compile(code, "README.md of the model", "exec"), namespace)
    assert namespace["rec"].model == "topn"


# The shell blocks: every command is one of the programs below, and parses with that program's own parser.

OFFLINE = {"~/data/ml-100k": str(ml100k_path())}  # placeholders a clone cannot have, and what stands in for them
KINDS = ("dot", "nn", "topn")


def shell_commands(text=PAGES):
    """Each command of every ```bash block of `text`: `# comments` dropped, `\\` continuations joined."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in re.sub(r"\\\n", " ", block).splitlines():
            line = re.sub(r"(^|\s)#.*", "", line).strip()
            if line:
                commands.append(line)
    return commands


def words(line):
    """A command's words as a shell would pass them, optional `[--flag]`s given and placeholders made offline."""
    line = re.sub(r"\[([^\]]*)\]", r"\1", line)
    for placeholder, stand_in in OFFLINE.items():
        line = line.replace(placeholder, stand_in)
    return shlex.split(line)


def invocations(line):
    """What a command runs, as (program, arguments) pairs; an AssertionError names a command no test checks."""
    argv = words(line)
    while argv and re.fullmatch(r"[A-Za-z_]\w*=\S*", argv[0]):  # OMP_NUM_THREADS=1 torchrun ...
        argv = argv[1:]
    if argv[:2] in (["python", "train.py"], ["python", "app.py"]):
        return [(argv[1], argv[2:])]
    if argv[:3] == ["python", "-m", "hfcf"]:
        return [("python -m hfcf", argv[3:])]
    if argv[:1] == ["torchrun"]:
        script = next((i for i, word in enumerate(argv) if word.endswith(".py")), None)
        assert script is not None and argv[script] == "train.py", f"README: torchrun should start train.py: {line}"
        return [("torchrun", argv[1:]), ("train.py", argv[script + 1:])]
    if argv[:1] == ["make"]:
        return [("make", argv[1:])]
    raise AssertionError(f"README command that no test checks (teach tests/test_readme.py about it): {line}")


def parse(program, argv):
    """(exit status, printed text) of `program`'s own argument parser on `argv`: 0 when it parses."""
    if program == "train.py":
        import train
        parse_args = lambda argv: train.parser().parse_args(train.negative_values_attached(argv))  # as main does
    elif program == "app.py":
        import app  # imports gradio: a second or two
        parse_args = app.parse_args
    elif program == "python -m hfcf":
        from hfcf.__main__ import parser
        parse_args = parser().parse_args
    else:
        from torch.distributed.run import get_args_parser  # torchrun's
        parse_args = get_args_parser().parse_args
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        try:
            parse_args(argv)
        except SystemExit as exit:
            return exit.code, printed.getvalue()
    return 0, printed.getvalue()


def make_problem(argv):
    """Why `make ARGV` would not run what the README says (None when it would)."""
    targets = re.findall(r"^(\w[\w.-]*)\s*:(?!=)", (ROOT / "Makefile").read_text(), flags=re.M)
    if len(argv) != 1 or argv[0] not in targets:
        return f"expected one Makefile target of {', '.join(targets)}"
    if shutil.which("make"):  # -n: prints the recipe, runs nothing (no install, no download)
        dry = subprocess.run(["make", "-n", argv[0]], cwd=ROOT, capture_output=True, text=True)
        if dry.returncode:
            return f"make -n {argv[0]} fails: {dry.stderr.strip()}"
    return None


def test_every_code_block_is_python_or_bash():
    """Blocks in another language (```sh, a bare ```) would be checked by neither the Python nor the shell tests."""
    fences = re.findall(r"^```(.*)$", PAGES, flags=re.M)
    assert len(fences) % 2 == 0 and set(fences[::2]) <= {"python", "bash"}, fences[::2]
    assert len(shell_commands()) >= 10


def test_every_shell_command_parses():
    """A command a reader copies is one of the programs it should be, and its flags and values are accepted.

    The Train block's lines that need the network or data no clone has (ratings.parquet, ~/data/ml-latest-small,
    --push) and the app, make and torchrun lines are only parsed; the others also run below.
    """
    problems = []
    for line in shell_commands():
        try:
            runs = invocations(line)
        except AssertionError as err:
            problems.append(str(err))
            continue
        for program, argv in runs:
            if program == "make":
                problem = make_problem(argv)
            else:
                code, printed = parse(program, argv)
                problem = f"exit {code}: {printed.strip().splitlines()[-1]}" if code else None  # argparse's error
                if "--help" in argv and "usage:" not in printed:
                    problem = f"--help printed no usage: {printed!r}"
            if problem:
                problems.append(f"README: {line}\n  {program}: {problem}")
    assert not problems, "\n".join(problems)


def own_flags(program, argv):
    """The --flags a command gives `program` (torchrun's stop at the script it starts)."""
    if program == "torchrun":
        argv = argv[:argv.index("train.py")]
    return {word.split("=")[0] for word in argv if word.startswith("--")}


def test_every_flag_in_the_shell_blocks_is_in_its_help():
    """argparse takes abbreviations (--epoch for --epochs), so a flag that parses may still be misspelt."""
    missing = []
    for line in shell_commands():
        for program, argv in invocations(line):
            if program == "make":
                continue
            help_argv = [argv[0], "--help"] if program == "python -m hfcf" else ["--help"]  # a subcommand's help
            code, help_text = parse(program, help_argv)
            assert code == 0, help_text
            missing += [f"README: {line}\n  {flag} is not in `{program} {' '.join(help_argv)}`"
                        for flag in sorted(own_flags(program, argv))
                        if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text)]
    assert not missing, "\n".join(missing)


def runs_offline(line):
    """A `python train.py` line of the README whose data is here: MovieLens 100k (the shared copy) or synthetic."""
    import train

    runs = invocations(line)
    if runs[0][0] != "train.py" or len(runs) != 1 or {"--push", "--help"} & set(runs[0][1]):
        return False
    argv = train.negative_values_attached(runs[0][1])
    return train.parser().parse_args(argv).data in (None, "synthetic", OFFLINE["~/data/ml-100k"])


@pytest.mark.integration
@pytest.mark.parametrize("line", [line for line in shell_commands() if runs_offline(line)])
def test_a_train_command_runs_offline(line, request, tmp_path):
    """Each Train line that needs no network trains and writes its folder, cut to one epoch per model.

    The lines that need data not available offline (ratings.parquet, ~/data/ml-latest-small) or the Hub (--push)
    are only parsed (test_every_shell_command_parses).
    """
    pytest.importorskip("fastai")
    import train

    argv = invocations(line)[0][1]
    if train.parser().parse_args(argv).data != "synthetic":
        request.getfixturevalue("ml100k")  # skipped without the shared copy; FASTAI_HOME's data/ml-100k links to it
    out = tmp_path / "model"
    one_epoch = ["--epochs", "1", *[word for kind in KINDS for word in ("--set", f"{kind}.epochs=1")]]
    assert train.main([*argv, *one_epoch, "--out", str(out)]) == 0
    assert (out / "config.json").is_file()


def own_data_commands():
    """The commands of the README's "Bring your own data" section."""
    return shell_commands(README.split("\n## Bring your own data\n", 1)[1].split("\n## ", 1)[0])


def test_bring_your_own_data_shows_the_five_shapes():
    from test_reading import SHAPES

    assert [invocations(line)[0][1][1] for line in own_data_commands()] == list(SHAPES)


@pytest.mark.parametrize("line", own_data_commands())
def test_a_bring_your_own_data_command_trains_on_its_shape(line, tmp_path):
    """Each command, on a generated file of the shape it names (and its titles table), trains as written."""
    pytest.importorskip("fastai")
    import train
    from test_reading import SHAPES

    argv = invocations(line)[0][1]
    SHAPES[argv[argv.index("--data") + 1]](tmp_path)
    argv = [str(tmp_path / word) if (tmp_path / word).is_file() else word for word in argv]
    one_epoch = ["--epochs", "1", *[word for kind in KINDS for word in ("--set", f"{kind}.epochs=1")]]
    assert train.main([*argv, *one_epoch, "--out", str(tmp_path / "model")]) == 0
