"""Client-side failures, each shown to the user as one clear line."""
from __future__ import annotations


class ClientError(Exception):
    """Base for errors that end the client with a message instead of a traceback."""

    exit_code = 1


class DataError(ClientError):
    """The data folder is missing, empty, unreadable or of an unknown layout."""

    exit_code = 2


class ModelMismatchError(ClientError):
    """The aggregator trains a model this client cannot (unknown architecture or other labels)."""

    exit_code = 3


class RefusedError(ClientError):
    """The aggregator refused a request for a reason retrying cannot fix."""

    exit_code = 4
