"""Errors of the service (``api``): the REST layer turns each into an HTTP status.

- :class:`JobNotFoundError` (404): no job has that id.
- :class:`InvalidTransitionError` (409): the job's status does not allow the action.
- :class:`IdempotencyConflictError` (409): an idempotency key reused with another spec.
- :class:`InvalidQueryError` (422): a listing asked for an unknown status or a bad page.
"""

from __future__ import annotations

from collections.abc import Iterable

from sparse_nas.errors import SparseNASError


class ServiceError(SparseNASError):
    """Root error of the service: every error ``api`` raises on purpose inherits it."""


class JobNotFoundError(ServiceError, LookupError):
    """No job has the id asked for."""

    def __init__(self, job_id: str):
        super().__init__(f"job {job_id!r} does not exist")
        self.job_id = job_id


class InvalidTransitionError(ServiceError, ValueError):
    """The job's current status does not allow the action (cancel, resume, delete, finish)."""

    def __init__(self, job_id: str, status: str, action: str, allowed: Iterable[str], detail: str = ""):
        allowed = tuple(allowed)
        super().__init__(
            f"cannot {action} job {job_id!r}: its status is {status!r}; {action} is allowed only when the status is "
            f"{' or '.join(repr(s) for s in allowed) if allowed else 'never'}{detail}"
        )
        self.job_id = job_id
        self.status = status
        self.action = action
        self.allowed = allowed


class IdempotencyConflictError(ServiceError, ValueError):
    """An idempotency key already names a job whose spec differs from the one submitted."""

    def __init__(self, idempotency_key: str, job_id: str):
        super().__init__(
            f"idempotency key {idempotency_key!r} was already used for job {job_id!r} with a different spec; "
            "submit the same spec to get that job back, or use a new key"
        )
        self.idempotency_key = idempotency_key
        self.job_id = job_id


class InvalidQueryError(ServiceError, ValueError):
    """A listing asked for an unknown status, or a negative or empty page."""
