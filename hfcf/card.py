"""The model card: README.md of a model folder (YAML front matter for the Hub, then text), from model_card.md.

Rendered at training time from config.json, and again at push time so that it names the repo it is published to.
"""
import re
from pathlib import Path

import numpy as np

from .errors import DataError
from .kinds import KINDS, preferred
from .kinds.base import epochs_text

RANKING_K = 10  # the cut-off of the ranking metrics on the card
RENDER_INSTEAD = "delete README.md to publish the card hfcf renders from config.json"  # what fixes a bad card
TEMPLATE = Path(__file__).resolve().parent.parent / "model_card.md"


def project_url():
    """hfcf's home page, from the one place it is set: `[project.urls] Homepage` in pyproject.toml (installed
    metadata when hfcf is installed, the file beside the package when it runs from a checkout)."""
    from importlib import metadata

    try:
        entries = metadata.metadata("hfcf").get_all("Project-URL") or []
        urls = dict(entry.split(", ", 1) for entry in entries)
    except metadata.PackageNotFoundError:
        import tomllib

        urls = tomllib.loads((TEMPLATE.parent / "pyproject.toml").read_text())["project"]["urls"]
    return urls["Homepage"]


def settings_text(kind, settings):
    """One line describing how a model was built and trained, from its config.json entry."""
    epochs = epochs_text(settings)
    return KINDS[kind].settings_text(settings) + (f"; {epochs}" if epochs else "")


def render_card(config, repo_id=None, example=None):
    """The model card: YAML front matter (library, tags, datasets, model-index) and text, from model_card.md.

    `example` {"user": id, "titles": [two titles]} from this model's own vocabularies, for the usage snippet.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    dataset, metrics, ranking = config["dataset"], config["metrics"], config.get("ranking", {})
    name = repo_id or "hfcf collaborative-filtering models"
    common = dict(dataset_type=dataset["id"], dataset_name=dataset["name"], dataset_split="held-out")
    results = [EvalResult(task_type="tabular-regression", task_name="Rating prediction", metric_type=metric,
                          metric_name=f"{metric.upper()} ({kind})", metric_value=metrics[kind][metric], **common)
               for kind in config["models"] if kind in metrics for metric in ("rmse", "mae")]
    results += [EvalResult(task_type="tabular-classification", task_name="Top-N recommendation", metric_type=metric,
                           metric_name=f"{metric} ({kind})", metric_value=ranking[kind][metric], **common)
                for kind in config["models"] if kind in ranking
                for metric in (f"precision@{RANKING_K}", f"ndcg@{RANKING_K}")]
    tags = ["fastai", "collaborative-filtering", "recommender-system", "safetensors", "tabular-regression"]
    if dataset["name"].startswith("MovieLens"):  # only what is true of this model
        tags.insert(3, "movielens")
    if dataset.get("implicit"):
        tags.append("implicit-feedback")
    card_data = ModelCardData(library_name="hfcf", license="other", model_name=name, eval_results=results or None,
                              tags=tags, pipeline_tag="tabular-regression",
                              datasets=[dataset["hub_id"]] if dataset.get("hub_id") else None)
    card = ModelCard.from_template(
        card_data, template_path=str(TEMPLATE), model_name=name, repo_id=repo_id or "you/name",
        project_url=project_url(), fastai_version=config["fastai_version"], dataset=dataset,
        split_description=config["split"]["description"],
        metric_rows=[{"name": key, **value} for key, value in metrics.items()],
        ranking_rows=[{"name": key, **{k.split("@")[0]: v for k, v in value.items()}} for key, value in ranking.items()],
        k=RANKING_K, ranked_users=config["split"].get("ranked_users"), valid_users=config["split"].get("n_valid_users"),
        kinds=list(config["models"]), example=example or {"user": 1, "titles": ["a title", "another"]},
        descriptions=[KINDS[kind].card_text(dataset.get("implicit")) for kind in preferred(config["models"])],
        default_kind=preferred(config["models"])[0],
        rating_models=" or ".join(f'"{name}"' for name, kind in KINDS.items() if kind.predicts_ratings),
        architectures={kind: KINDS[kind].files_text() for kind in config["models"]}, models=config["models"],
        y_range=config["y_range"], seed=config["seed"], distributed=config.get("distributed"),
        settings_text={kind: settings_text(kind, s) for kind, s in config["models"].items()})
    return str(card)


def card_example(user_keys, item_keys, item_counts):
    """The card's usage snippet names the model's own first user and two most-rated titles, not MovieLens's."""
    most_rated = np.argsort(-np.asarray(item_counts), kind="stable")[:2]
    return {"user": user_keys[1], "titles": [str(item_keys[row]) for row in most_rated]}


def card_for_repo(folder, repo_id, current):
    """The card of a loaded model folder (`artifacts.ModelFolder`) with `repo_id` written into its title, links and
    snippet, to publish it there; `current` is the folder's README.md text (None: it has none, so one is rendered).

    None when the card is not the one hfcf rendered (edited by hand, or from before vocab.json had item counts):
    it is then published as it is.
    """
    from huggingface_hub import ModelCard

    if current is not None:
        front_matter(current, "README.md", RENDER_INSTEAD)
    if folder.item_counts is None:
        if current is None:
            raise DataError(f"{folder.path} has no README.md and its vocab.json predates item counts, so hfcf "
                            "cannot render its card: write a README.md there, or retrain it with train.py")
        return None
    example = card_example(folder.users.keys, folder.items.keys, folder.item_counts)
    if current is not None:
        rendered_for = ModelCard(current, ignore_metadata_errors=True).data.model_name
        if current != render_card(folder.config, rendered_for if "/" in str(rendered_for) else None, example):
            return None
    return render_card(folder.config, repo_id, example)


def decode(data, name, fix):
    """A card's bytes as text; DataError naming `fix` when they are not UTF-8 (what the Hub reads)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{name} is not UTF-8 text (byte {err.start} is {data[err.start]:#04x}): save it as UTF-8, "
                        f"or {fix}") from None


def front_matter(text, name, fix):
    """The YAML front matter of a card as a dict ({} when it has none); DataError naming `fix` when it is not
    YAML key: value lines, which the Hub would refuse."""
    import yaml
    from huggingface_hub.repocard import REGEX_YAML_BLOCK

    match = REGEX_YAML_BLOCK.search(text)
    if not match:
        return {}
    try:
        data = yaml.safe_load(match.group(2))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 2}: {err.problem})" if mark else ""  # + 2: 1-based, after the opening ---
        raise DataError(f"the YAML front matter of {name} does not parse{where}: fix it between the --- lines, "
                        f"or {fix}") from None
    if data is not None and not isinstance(data, dict):
        raise DataError(f"the YAML front matter of {name} must be key: value lines (it holds a "
                        f"{type(data).__name__}): fix it between the --- lines, or {fix}")
    return data or {}


def with_models(text, repo_id, name):
    """A Space README's `text` with its front matter's `models:` set to [repo_id]: the line is replaced where it
    is (or added last), so comments, order and layout stay as the author wrote them."""
    import yaml
    from huggingface_hub.repocard import REGEX_YAML_BLOCK

    data = front_matter(text, name, "pass the Space's README with --readme")
    entry = f"models:\n- {repo_id}"
    match = REGEX_YAML_BLOCK.search(text)
    if not match:
        return f"---\n{entry}\n---\n{text}"
    block = match.group(2)
    # A top-level `models:` and the lines of its value (indented, or a list at the key's own column).
    key = re.compile(r"^models:.*(?:\n[ \t-].*)*", re.M)
    edited = key.sub(lambda _: entry, block, count=1) if key.search(block) else f"{block}\n{entry}"
    try:
        kept = yaml.safe_load(edited) == {**data, "models": [repo_id]}
    except yaml.YAMLError:
        kept = False
    if not kept:  # a layout the line edit cannot follow (a flow mapping, an anchor): write the YAML afresh
        edited = yaml.safe_dump({**data, "models": [repo_id]}, sort_keys=False, allow_unicode=True).rstrip("\n")
    return text[:match.start(2)] + edited + text[match.end(2):]
