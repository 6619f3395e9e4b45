"""One exception per domain failure; entry points map each to HTTP or CLI once."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class DomainError(Exception):
    """Base of every refusal the engine makes on purpose."""

    code: str = "domain_error"
    title: str = "Request refused"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def extra(self) -> dict[str, object]:
        """Machine-readable fields that go with the error (never personal data)."""
        return {}


class UnknownCase(DomainError):
    code = "unknown_case"
    title = "Unknown case"

    def __init__(self, case_id: str) -> None:
        super().__init__(f"no case with id {case_id}")
        self.case_id = case_id


class UnknownTrigger(DomainError):
    code = "unknown_trigger"
    title = "Unknown trigger"

    def __init__(self, trigger: str, known: Sequence[str]) -> None:
        super().__init__(f"no trigger named {trigger!r}")
        self.trigger = trigger
        self.known = tuple(known)

    def extra(self) -> dict[str, object]:
        return {"trigger": self.trigger, "known_triggers": list(self.known)}


class TransitionNotAllowed(DomainError):
    code = "transition_not_allowed"
    title = "Transition not allowed from this state"

    def __init__(self, trigger: str, state: str, allowed: Sequence[str]) -> None:
        super().__init__(f"{trigger!r} cannot be fired from state {state!r}")
        self.trigger = trigger
        self.state = state
        self.allowed = tuple(allowed)

    def extra(self) -> dict[str, object]:
        return {"trigger": self.trigger, "state": self.state, "allowed_triggers": list(self.allowed)}


class GuardFailed(DomainError):
    code = "guard_failed"
    title = "Guard failed"

    def __init__(self, trigger: str, reasons: Sequence[str]) -> None:
        super().__init__(f"{trigger!r} refused: " + "; ".join(reasons))
        self.trigger = trigger
        self.reasons = tuple(reasons)

    def extra(self) -> dict[str, object]:
        return {"trigger": self.trigger, "reasons": list(self.reasons)}


class PermissionDenied(DomainError):
    code = "permission_denied"
    title = "Permission denied"


class VersionConflict(DomainError):
    code = "version_conflict"
    title = "Version conflict"

    def __init__(self, case_id: str, expected: int, actual: int | None) -> None:
        super().__init__(f"case {case_id} is at version {actual}, not {expected}")
        self.case_id = case_id
        self.expected = expected
        self.actual = actual

    def extra(self) -> dict[str, object]:
        return {"expected_version": self.expected, "current_version": self.actual}


class InvalidPayload(DomainError):
    code = "invalid_payload"
    title = "Invalid payload"

    def __init__(self, detail: str, errors: Sequence[Mapping[str, object]] = ()) -> None:
        super().__init__(detail)
        self.errors = tuple(errors)

    def extra(self) -> dict[str, object]:
        return {"errors": list(self.errors)} if self.errors else {}


class BudgetExceeded(DomainError):
    """A disbursement would spend more than a member's budget line holds."""

    code = "budget_exceeded"
    title = "Budget exceeded"


class IdempotencyKeyReused(DomainError):
    code = "idempotency_key_reused"
    title = "Idempotency key reused with another request"

    def __init__(self, key: str) -> None:
        super().__init__("this idempotency key was already used for a different request")
        self.key = key


class UnknownTask(DomainError):
    """No task with that id in the caller's office (another office's task is unknown, as a case is)."""

    code = "unknown_task"
    title = "Unknown task"

    def __init__(self, task_id: str) -> None:
        super().__init__(f"no task with id {task_id}")
        self.task_id = task_id


class TaskClosed(DomainError):
    """The task was cancelled (its journey was called off): there is nothing left to complete."""

    code = "task_closed"
    title = "Task cancelled"

    def __init__(self, task_id: str, status: str) -> None:
        super().__init__(f"task {task_id} is {status}; only an open task can be completed")
        self.task_id = task_id
        self.status = status

    def extra(self) -> dict[str, object]:
        return {"task_status": self.status}


class TimerVoid(DomainError):
    """A deadline's fire that has nothing to do here: its timer is no longer pending (the case
    moved on, cancelling it, between the beat's claim and the fire), or the case's owner office
    is served by another deployment (a handed-over case's copy: that deployment keeps its
    deadlines). Only the timer service fires with a timer; it files the timer as never fired.
    Not in ``ALL_ERRORS``: no API or CLI call can meet it."""

    code = "timer_void"
    title = "The deadline has nothing to do in this deployment"

    def __init__(self, timer_id: str, why: str) -> None:
        super().__init__(f"timer {timer_id}: {why}")
        self.timer_id = timer_id


ALL_ERRORS: tuple[type[DomainError], ...] = (
    UnknownCase,
    UnknownTrigger,
    TransitionNotAllowed,
    GuardFailed,
    PermissionDenied,
    VersionConflict,
    InvalidPayload,
    BudgetExceeded,
    IdempotencyKeyReused,
    UnknownTask,
    TaskClosed,
)
