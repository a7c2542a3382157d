"""The errors hfcf raises: each names the problem and, where there is one, the fix."""


class HfcfError(Exception):
    """Base class: every error hfcf raises on purpose is one of these."""


class DataError(HfcfError, ValueError):
    """A ratings table, a file or a training setting that cannot be used."""


class UnknownUserError(HfcfError, KeyError):
    """A user id that is not in the model's vocabulary."""

    def __str__(self):  # KeyError quotes its message; ours is a sentence
        return str(self.args[0]) if self.args else ""


class UnknownItemError(HfcfError, KeyError):
    """A title or item id that is not in the model's vocabulary."""

    def __init__(self, message, suggestions=()):
        super().__init__(message)
        self.suggestions = list(suggestions)

    def __str__(self):
        return str(self.args[0]) if self.args else ""


class ArtifactError(HfcfError):
    """A model folder or repo that is missing, corrupt, unsafe or of another format."""


class HubError(HfcfError):
    """A Hub request that failed: authentication, permissions, a missing repo or no network."""


class MissingColumnError(DataError):
    """A table without a column it was asked for; `column`, `source` and `found` let a caller give its own fix."""

    def __init__(self, message, source, column, found):
        super().__init__(message)
        self.source, self.column, self.found = source, column, list(found)
