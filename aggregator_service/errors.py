"""The ways an update or request can be refused, one exception type per kind.

Each carries a short ``reason`` (a metric label from a small fixed set); the
servicer maps the type to a gRPC status code.
"""
from __future__ import annotations


class RejectedError(Exception):
    """Base: a request refused with a reason; nothing in the federation changed."""

    reason = "rejected"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class InvalidUpdateError(RejectedError):
    """Malformed or inconsistent update: header fields, bytes, tensors (INVALID_ARGUMENT)."""

    reason = "invalid"


class WrongRoundError(RejectedError):
    """An update for a round other than the open one, e.g. stale (FAILED_PRECONDITION)."""

    reason = "wrong_round"


class FederationFinishedError(RejectedError):
    """The federation ran all its rounds; no more updates are taken (FAILED_PRECONDITION)."""

    reason = "finished"


class DuplicateClientError(RejectedError):
    """A client id already contributed to this round (ALREADY_EXISTS)."""

    reason = "duplicate_client"


class TooManyStreamsError(RejectedError):
    """A client already has the allowed number of streams open (RESOURCE_EXHAUSTED)."""

    reason = "too_many_streams"


class InvalidReportError(RejectedError):
    """An evaluation report that cannot be right (INVALID_ARGUMENT)."""

    reason = "invalid_report"


class BusyError(RejectedError):
    """No receive buffer came free in time; the client retries later."""

    reason = "busy"


class WrongBaseError(RejectedError):
    """A delta update computed from another global version than the round's."""

    reason = "wrong_base"
