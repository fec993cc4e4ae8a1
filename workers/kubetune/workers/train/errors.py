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
