"""hfcf: fastai collaborative filtering as a Hugging Face Hub model and a Gradio Space."""
__version__ = "0.1.0"

from .errors import ArtifactError, DataError, HfcfError, HubError, UnknownItemError, UnknownUserError  # noqa: E402

__all__ = ["Recommender", "HfcfError", "DataError", "UnknownUserError", "UnknownItemError", "ArtifactError",
           "HubError", "__version__"]


def __getattr__(name):
    # Imported on first use so `import hfcf` stays light (no torch) for the CLI's --help and error paths.
    if name == "Recommender":
        from .recommend import Recommender
        return Recommender
    raise AttributeError(name)
