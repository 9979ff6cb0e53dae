"""The access-request state machine as data, and the one function that moves a request.

Why a table: the rules "which status may go where, on which event" used to live in a dozen
hand-written UPDATEs across lifecycle and provisioning. Here they are one list of `Move`s that
`transition()` performs and `scripts/lifecycle_diagram.py` draws into the README, so the code
and the picture cannot drift apart.

Two columns move. `status` is what readers see (`granting` is internal: shown as pending).
`provisioning_state` says an outside revoke (or cleanup) is owed beside the status: a move into
an ended status that `owes_revoke` sets it to `revoking`; the revoke's outcome clears it or
leaves `revoke_failed` for the reaper to try again.

Every move is one conditional UPDATE ... WHERE <column> IN (sources): of two racers, exactly one
sees its row updated (and, on PostgreSQL, the loser waits for the winner's row lock first).
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from security_api import metrics
from security_api.enums import ProvisioningState as PS
from security_api.enums import RequestStatus as RS
from security_api.errors import Conflict
from security_api.integrations import slack_outbox
from security_api.models import AccessRequest


class Event(StrEnum):
    SUBMIT = "submit"  # created for approval (an insert: drawn, never performed)
    SUBMIT_AUTO = "submit_auto"  # created under an `auto` rule (an insert, as above)
    BREAK_GLASS = "break_glass"  # self-granted under a `break_glass` rule (an insert, as above)
    DECIDE = "decide"  # an approval or denial is being recorded: takes the row's lock
    APPROVE = "approve"  # the last approval needed: the grant is claimed
    DENY = "deny"
    CANCEL = "cancel"
    RETRY = "retry"
    HEARTBEAT = "heartbeat"  # the worker running the grant is alive
    GRANT_FINISHED = "grant_finished"
    GRANT_FAILED = "grant_failed"
    RECOVER = "recover"  # the worker running the grant is gone (its lease lapsed)
    VERIFY_ABSENT = "verify_absent"  # a late read-back found the active grant missing
    REVOKE = "revoke"
    EXPIRE = "expire"
    EXPIRE_PENDING = "expire_pending"  # not decided within the rule's pending_ttl_minutes
    END_INELIGIBLE = "end_ineligible"  # deactivated, or the role no longer allows it
    REVIEWED_UNJUSTIFIED = "reviewed_unjustified"  # a break-glass use judged unjustified
    RETRY_REVOKE = "retry_revoke"  # the reaper takes over an owed revoke
    REVOKE_FINISHED = "revoke_finished"
    REVOKE_FAILED = "revoke_failed"
    # Extensions (access/extension.py): a running grant's end moves; an extension approved
    # while the grant runs continues it (no provisioning); a grant's end takes its extensions.
    EXTEND = "extend"
    CONTINUE = "continue"
    EXPIRE_WITH_GRANT = "expire_with_grant"
    END_WITH_GRANT = "end_with_grant"


class Column(StrEnum):
    STATUS = "status"
    PROVISIONING = "provisioning_state"


SAME = "same"  # a target meaning "stays where it is" (a claim or a lock, not a change)
OWED = (PS.REVOKING, PS.REVOKE_FAILED)


@dataclass(frozen=True)
class Move:
    event: Event
    sources: tuple[str, ...]  # empty: a creation
    target: str | None  # None on the provisioning column: nothing owed any more
    column: Column = Column.STATUS
    owes_revoke: bool = False  # the outside grant must be undone from this commit on
    refusal: tuple[str, str] | None = None  # (message, code) of the 409 when it cannot happen
    duplicate: tuple[str, str] | None = None  # the 409 when another open request holds the slot


NOT_PENDING = ("The request is not pending.", "request_not_pending")
MOVES: tuple[Move, ...] = (
    Move(Event.SUBMIT, (), RS.PENDING),
    Move(Event.SUBMIT_AUTO, (), RS.GRANTING),
    Move(Event.BREAK_GLASS, (), RS.GRANTING),
    Move(Event.DECIDE, (RS.PENDING,), SAME, refusal=NOT_PENDING),
    Move(Event.APPROVE, (RS.PENDING,), RS.GRANTING,
         refusal=("The request was decided meanwhile.", "request_not_pending"),
         duplicate=("The requester has another open request for this permission.",
                    "already_requested")),
    Move(Event.DENY, (RS.PENDING,), RS.DENIED, refusal=NOT_PENDING),
    Move(Event.CANCEL, (RS.PENDING,), RS.CANCELLED, refusal=NOT_PENDING),
    Move(Event.END_INELIGIBLE, (RS.PENDING,), RS.CANCELLED),
    Move(Event.EXPIRE_PENDING, (RS.PENDING,), RS.EXPIRED),
    Move(Event.RETRY, (RS.FAILED,), RS.GRANTING,
         refusal=("Only a failed request can be retried.", "request_not_failed"),
         duplicate=("Only a failed request can be retried.", "request_not_failed")),
    Move(Event.HEARTBEAT, (RS.GRANTING,), SAME),
    Move(Event.GRANT_FINISHED, (RS.GRANTING,), RS.ACTIVE),
    Move(Event.GRANT_FAILED, (RS.GRANTING,), RS.FAILED),
    Move(Event.RECOVER, (RS.GRANTING,), RS.FAILED, owes_revoke=True),
    Move(Event.VERIFY_ABSENT, (RS.ACTIVE,), RS.FAILED, owes_revoke=True),
    Move(Event.REVOKE, (RS.ACTIVE,), RS.REVOKED, owes_revoke=True,
         refusal=("The grant is not active.", "request_not_active")),
    Move(Event.EXPIRE, (RS.ACTIVE,), RS.EXPIRED, owes_revoke=True),
    Move(Event.END_INELIGIBLE, (RS.ACTIVE,), RS.REVOKED, owes_revoke=True),
    Move(Event.EXTEND, (RS.ACTIVE,), SAME),
    Move(Event.CONTINUE, (RS.PENDING,), RS.ACTIVE,
         refusal=("The request was decided meanwhile.", "request_not_pending")),
    Move(Event.EXPIRE_WITH_GRANT, (RS.ACTIVE,), RS.EXPIRED),
    Move(Event.END_WITH_GRANT, (RS.ACTIVE,), RS.REVOKED),
    Move(Event.END_WITH_GRANT, (RS.PENDING,), RS.CANCELLED),
    # No refusal: a grant already ended (expired, revoked) keeps its end; the verdict stands.
    Move(Event.REVIEWED_UNJUSTIFIED, (RS.ACTIVE,), RS.REVOKED, owes_revoke=True),
    Move(Event.RETRY_REVOKE, OWED, SAME, Column.PROVISIONING),
    Move(Event.REVOKE_FINISHED, OWED, None, Column.PROVISIONING),
    Move(Event.REVOKE_FAILED, OWED, PS.REVOKE_FAILED, Column.PROVISIONING),
)


def move_for(event: Event, source: str | None = None) -> Move:
    """Return the move of `event` (from `source` when the event leaves several statuses)."""
    moves = [m for m in MOVES if m.event == event and m.sources
             and (source is None or source in m.sources)]
    if len(moves) != 1:
        raise ValueError(f"no single move for {event} from {source}: {moves}")
    return moves[0]


def transition(session: Session, request_id: str, *, event: Event, source: str | None = None,
               extra_where=(), **values) -> bool:
    """Perform one move of the table on one request, in the caller's transaction.

    Returns whether this call won the move. A move with a `refusal` raises it instead of
    returning False (the request was not where the event may start): its 409 is the answer.
    Never commits, never rolls back: the public operation that called owns the transaction.
    """
    move = move_for(event, source)
    column = getattr(AccessRequest, move.column)
    sources = (source,) if source is not None else move.sources
    # A move that stays (a lock) still writes the column: an UPDATE needs something to set.
    values[move.column.value] = column if move.target == SAME else move.target
    if move.owes_revoke:
        values["provisioning_state"] = PS.REVOKING
    try:
        won = session.execute(
            update(AccessRequest)
            .where(AccessRequest.id == request_id, column.in_(sources), *extra_where)
            .values(**values)).rowcount == 1
    except IntegrityError:
        if move.duplicate is None:
            raise
        raise Conflict(move.duplicate[0], code=move.duplicate[1]) from None
    if not won and move.refusal is not None:
        raise Conflict(move.refusal[0], code=move.refusal[1])
    if won and move.column == Column.STATUS and move.target != SAME:
        metrics.stage_request_status(session, move.target)
    if won and move.column == Column.STATUS and (move.target != SAME or event == Event.DECIDE):
        slack_outbox.request_moved(session, request_id)  # its Slack message shows the change
    return won
