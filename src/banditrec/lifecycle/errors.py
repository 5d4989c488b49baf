"""The errors of the lifecycle's admin operations (answered by `banditrec.errors`)."""

__all__ = [
    "CandidateExistsError",
    "InvalidCandidateError",
    "LifecycleNotFoundError",
    "NotProvenError",
]


class LifecycleNotFoundError(LookupError):
    """No candidate or model version of that name (HTTP 404)."""


class CandidateExistsError(ValueError):
    """A candidate of that name is registered already (HTTP 409)."""


class NotProvenError(ValueError):
    """A promotion the estimates do not support, and that was not forced (HTTP 409)."""


class InvalidCandidateError(ValueError):
    """A candidate whose policy or parameters cannot run (HTTP 422)."""
