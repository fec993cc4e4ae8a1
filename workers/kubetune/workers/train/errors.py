"""Errors the trainer reports to the user as its termination message.

A `TrainerError` carries a message that names the cause (field, file, URI) so that
`kubectl describe` tells the user what to fix without reading logs.
"""


class TrainerError(RuntimeError):
    """A failure whose message is fit to show the user as is."""


class DatasetError(TrainerError):
    """The dataset is missing, malformed or in the wrong format."""


class ModelSourceError(TrainerError):
    """The base model cannot be found or loaded."""


def error_message(exc: BaseException) -> str:
    """A one-line cause for the termination message; TrainerErrors already name it."""
    if isinstance(exc, TrainerError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"[:1000]
