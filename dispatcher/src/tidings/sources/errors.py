"""Errors a source adapter reports: a condition reason a script can match, and
a message that names what is wrong and how to fix it.

The adapter logs them, publishes them in its status (tidings.sources.status)
for the operator to show on the EventSource, and retries with backoff: most
are fixed by a person while the adapter keeps trying (grant a privilege,
create a table), and it then recovers by itself.
"""

from __future__ import annotations


class SourceError(Exception):
    """A problem the adapter cannot solve by itself. `reason` is CamelCase."""

    reason = "SourceError"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


class ConnectionFailed(SourceError):
    reason = "ConnectionFailed"


class MissingReplicationPrivilege(SourceError):
    reason = "MissingReplicationPrivilege"


class WalLevelNotLogical(SourceError):
    reason = "WalLevelNotLogical"


class TableNotFound(SourceError):
    reason = "TableNotFound"


class ColumnNotFound(SourceError):
    reason = "ColumnNotFound"


class NoReplicaIdentity(SourceError):
    reason = "NoReplicaIdentity"


class PublicationNotPermitted(SourceError):
    reason = "PublicationNotPermitted"


class SlotUnavailable(SourceError):
    """The slot is used by another connection, or cannot be created."""

    reason = "SlotUnavailable"


class ResourceNotFound(SourceError):
    """A Kubernetes kind that the API server does not serve."""

    reason = "ResourceNotFound"


class Forbidden(SourceError):
    """RBAC refused a list, watch or Lease call."""

    reason = "Forbidden"


class InvalidSchedule(SourceError):
    reason = "InvalidSchedule"
