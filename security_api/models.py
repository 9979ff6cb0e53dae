"""SQLAlchemy 2 models: users and roles, sign-in state, audit chain, shared counters."""
from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from security_api.db import Base, UTCDateTime
from security_api.json_column import JSONText


def new_id() -> str:
    """Return a fresh opaque identifier."""
    return str(uuid.uuid4())


class Role(Base):
    __tablename__ = "roles"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    description: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Subrole(Base):
    __tablename__ = "subroles"

    role: Mapped[str] = mapped_column(ForeignKey("roles.name"), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    description: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        ForeignKeyConstraint(["role", "subrole"], ["subroles.role", "subroles.name"]),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    email: Mapped[str | None] = mapped_column(String(254))
    role: Mapped[str] = mapped_column(String(64))
    subrole: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    password_hash: Mapped[str] = mapped_column(String(100))
    # Encrypted with the service's data key (SecretBox), never stored in clear.
    totp_secret: Mapped[str | None] = mapped_column(String(255))
    totp_confirmed: Mapped[bool] = mapped_column(Boolean, default=False)
    # Epoch second before which every token of this user is dead.
    tokens_valid_after: Mapped[int] = mapped_column(BigInteger, default=0)
    # The last TOTP step accepted, kept here (not in a cache) so a code works at most once.
    last_totp_step: Mapped[int | None] = mapped_column(BigInteger)
    # The Slack member id (U.../W...) whose button presses act as this account; set by an admin.
    slack_user_id: Mapped[str | None] = mapped_column(String(32), unique=True, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    password_changed_at: Mapped[datetime] = mapped_column(UTCDateTime())

    @property
    def roles(self) -> list[str]:
        """Return the role and role/subrole pair, as put in tokens."""
        return [self.role, f"{self.role}/{self.subrole}"]


class RecoveryCode(Base):
    __tablename__ = "recovery_codes"
    __table_args__ = (UniqueConstraint("user_id", "code_hash"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    code_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class RefreshFamily(Base):
    """One sign-in: every refresh token rotated from it, and its access tokens."""

    __tablename__ = "refresh_families"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_reason: Mapped[str | None] = mapped_column(String(64))


class RefreshToken(Base):
    __tablename__ = "refresh_tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    family_id: Mapped[str] = mapped_column(ForeignKey("refresh_families.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class AuditEvent(Base):
    __tablename__ = "audit_events"
    __table_args__ = (
        # The sequencer's queue: appended events not sealed yet, in append order (small, hot).
        Index("ix_audit_events_pending", "append_key",
              sqlite_where=text("seq IS NULL"), postgresql_where=text("seq IS NULL")),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    # seq, prev_hash and hash are NULL while the event is appended but not sealed yet
    # (audit/sequencer.py gives them, gap-free, under the head's lock).
    seq: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    actor: Mapped[str | None] = mapped_column(String(128), index=True)
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str | None] = mapped_column(String(256))
    ip: Mapped[str | None] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(128))
    details: Mapped[str] = mapped_column(Text, default="{}")
    prev_hash: Mapped[str | None] = mapped_column(String(64))
    hash: Mapped[str | None] = mapped_column(String(64))
    # Which AUDIT_CHAIN_KEY made `hash` (an HMAC); NULL for plain SHA-256 rows written before
    # the chain was keyed, valid only up to the head's signed seal.
    key_id: Mapped[str | None] = mapped_column(String(16))
    # Append order (time_ns, random, position in its transaction); NULL on rows chained at
    # commit before the sequencer existed.
    append_key: Mapped[str | None] = mapped_column(String(48))
    # HMAC over the event's own content (not its place in the chain), made when appended: a
    # change between append and seal shows in verify (see chain.entry_mac).
    entry_mac: Mapped[str | None] = mapped_column(String(64))


class AuditChainHead(Base):
    """The chain's end, locked only by the sequencer while it seals a batch: no fork.

    Writers never touch it: they append unsealed events (audit.record) and the sequencer
    (audit/sequencer.py) gives them seq and hashes in batches under this row's lock. It is
    also the chain's signed checkpoint, kept outside the events table: `signature` is an
    HMAC over (`seq`, `last_hash`) with the key `key_id`, so moving the head back (to hide rows
    removed from the end) needs the key. `sealed_*` close the legacy unkeyed segment.
    """

    __tablename__ = "audit_chain_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
    last_hash: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str | None] = mapped_column(String(16))
    signature: Mapped[str | None] = mapped_column(String(64))
    sealed_seq: Mapped[int | None] = mapped_column(BigInteger)
    sealed_hash: Mapped[str | None] = mapped_column(String(64))
    seal_key_id: Mapped[str | None] = mapped_column(String(16))
    seal_signature: Mapped[str | None] = mapped_column(String(64))


class LoginFailure(Base):
    """Consecutive failures and lock state per username (database store)."""

    __tablename__ = "login_failures"

    key: Mapped[str] = mapped_column(String(80), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failure_at: Mapped[int] = mapped_column(BigInteger, default=0)
    locked_until: Mapped[int] = mapped_column(BigInteger, default=0)


class RateCounter(Base):
    """Fixed-window request counters per client address (database store)."""

    __tablename__ = "rate_counters"

    key: Mapped[str] = mapped_column(String(160), primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)
    expires_at: Mapped[int] = mapped_column(BigInteger, index=True)


class Permission(Base):
    """Something an employee can hold, and the provisioner that makes it real."""

    __tablename__ = "permissions"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(String(2000), default="")
    max_duration_minutes: Mapped[int] = mapped_column(Integer)
    requires_justification: Mapped[bool] = mapped_column(Boolean, default=False)
    provisioner: Mapped[str] = mapped_column(String(64), default="none")
    provisioner_config: Mapped[dict] = mapped_column(JSONText(), default=dict)
    builtin: Mapped[bool] = mapped_column(Boolean, default=False)
    # stepup: creating, extending, approving or denying a request needs a fresh TOTP code.
    step_up: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class PolicyRule(Base):
    """Ties a role and subrole (or *) to a permission with a mode."""

    __tablename__ = "policy_rules"
    __table_args__ = (UniqueConstraint("permission_key", "role", "subrole"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    # The unique constraint's index (permission, role, subrole) makes every decision a look-up.
    permission_key: Mapped[str] = mapped_column(ForeignKey("permissions.key"))
    role: Mapped[str] = mapped_column(String(64))
    subrole: Mapped[str] = mapped_column(String(64))
    mode: Mapped[str] = mapped_column(String(16))
    max_duration_minutes: Mapped[int | None] = mapped_column(Integer)
    approvers: Mapped[list] = mapped_column(JSONText(empty="[]"), default=list)
    approvals_required: Mapped[int] = mapped_column(Integer, default=1)
    # break_glass: minutes the approvers have to review a use (see access/break_glass_models.py).
    review_within_minutes: Mapped[int] = mapped_column(Integer, default=1440,
                                                       server_default="1440")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # pendingexp: how long a request under this rule may wait for a decision.
    pending_ttl_minutes: Mapped[int] = mapped_column(Integer, default=1440,
                                                     server_default=text("1440"))


OPEN_SLOT = "status IN ('pending', 'granting', 'active') AND continues_id IS NULL"


class AccessRequest(Base):
    """One request for a permission, through its whole lifecycle."""

    __tablename__ = "access_requests"
    __table_args__ = (
        # At most one open (pending or active) request per person and permission, even racing.
        # A row that leans on another grant (`continues_id`, an extension) holds no slot of its own.
        Index("uq_access_requests_open", "requester_id", "permission_key", unique=True,
              sqlite_where=text(OPEN_SLOT), postgresql_where=text(OPEN_SLOT)),
        # At most one extension waiting per grant, even racing.
        Index("uq_access_requests_open_extension", "continues_id", unique=True,
              sqlite_where=text("status = 'pending'"), postgresql_where=text("status = 'pending'")),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    requester_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    permission_key: Mapped[str] = mapped_column(ForeignKey("permissions.key"), index=True)
    justification: Mapped[str] = mapped_column(String(2000), default="")
    params: Mapped[dict] = mapped_column(JSONText(sort_keys=True), default=dict)
    duration_minutes: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), index=True)
    # The rule's terms, frozen when the request was made: later policy edits do not move them.
    mode: Mapped[str] = mapped_column(String(16))
    approvals_required: Mapped[int] = mapped_column(Integer, default=1)
    requester_ip: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    provisioning: Mapped[dict] = mapped_column(JSONText(sort_keys=True), default=dict)
    # An outside call still owed (see provisioning.py), and when it was last started.
    provisioning_state: Mapped[str | None] = mapped_column(String(16), index=True)
    provisioning_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Extensions (see access/extension.py): the request this one asked to extend, for ever;
    # and, while it leans on that grant (pending, or approved in time), the grant it continues.
    extends_id: Mapped[str | None] = mapped_column(
        ForeignKey("access_requests.id", name="fk_access_requests_extends_id"), index=True)
    continues_id: Mapped[str | None] = mapped_column(
        ForeignKey("access_requests.id", name="fk_access_requests_continues_id"))
    # Read-back (readback.py): when the target confirmed the grant / the revoke; and, while
    # a grant's read-back could not be made and is still owed, when to try it again.
    grant_verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoke_verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    verify_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)
    # pendingexp: the decision deadline, frozen at creation from the rule's pending_ttl_minutes;
    # why an expired request ended ("not_decided" or "ended"); and the `expires_at` the holder
    # was last warned about (a grant extended to a new end may be warned again).
    pending_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)
    expired_reason: Mapped[str | None] = mapped_column(String(16))
    expiry_warned_for: Mapped[datetime | None] = mapped_column(UTCDateTime())


class RequestApproverGroup(Base):
    """Who may decide a request: a role, or a role/subrole (subrole '*' for the whole role)."""

    __tablename__ = "request_approver_groups"

    request_id: Mapped[str] = mapped_column(ForeignKey("access_requests.id"), primary_key=True)
    role: Mapped[str] = mapped_column(String(64), primary_key=True)
    subrole: Mapped[str] = mapped_column(String(64), primary_key=True)


class Approval(Base):
    """One approver's decision on one request (a person decides once)."""

    __tablename__ = "approvals"
    __table_args__ = (UniqueConstraint("request_id", "approver_id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    request_id: Mapped[str] = mapped_column(ForeignKey("access_requests.id"), index=True)
    approver_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    decision: Mapped[str] = mapped_column(String(16))
    comment: Mapped[str] = mapped_column(String(2000), default="")
    at: Mapped[datetime] = mapped_column(UTCDateTime())


class PortalSession(Base):
    """A browser's server-side session: the cookie holds a random id, this row its SHA-256."""

    __tablename__ = "portal_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    data: Mapped[dict] = mapped_column(JSONText(), default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # The earlier of idle and absolute expiry: rows past it are dead and purged by the reaper.
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class OutboxMessage(Base):
    """A notification written in the transaction of the change that caused it, sent after.

    A row is owed until `delivered_at` is set; a deliverer holds it while `claimed_until` is
    in the future, and a failed attempt moves `next_attempt_at` back off (see outbox_delivery).
    """

    __tablename__ = "outbox"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict] = mapped_column(JSONText(sort_keys=True))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    claim_token: Mapped[str | None] = mapped_column(String(36))
    # Channels already reached ("webhook", "email:<address>"): a retry skips them.
    sent_channels: Mapped[list] = mapped_column(JSONText(empty="[]"), default=list)
    last_error: Mapped[str | None] = mapped_column(String(200))
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)


# ---- conflict sets (separation of duties) --------------------------------------------------------
class ConflictSet(Base):
    """Permissions of which a person may hold or wait for at most one at a time."""

    __tablename__ = "conflict_sets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    description: Mapped[str] = mapped_column(String(2000), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ConflictSetMember(Base):
    """One permission of a conflict set; the index on the key makes "which sets?" a look-up."""

    __tablename__ = "conflict_set_members"

    set_name: Mapped[str] = mapped_column(ForeignKey("conflict_sets.name"), primary_key=True)
    permission_key: Mapped[str] = mapped_column(ForeignKey("permissions.key"), primary_key=True,
                                                index=True)


class SlackMessage(Base):
    """The Slack message that shows a request, so later decisions can update it (chat.update).

    Written with the request (ts NULL: owed); `ts` and `channel` are filled once posted.
    """

    __tablename__ = "slack_messages"

    request_id: Mapped[str] = mapped_column(ForeignKey("access_requests.id"), primary_key=True)
    channel: Mapped[str | None] = mapped_column(String(64))
    ts: Mapped[str | None] = mapped_column(String(64))
    posted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class SlackInteraction(Base):
    """A signed Slack payload already acted on: its digest is unique, so it acts only once."""

    __tablename__ = "slack_interactions"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


# Registered with Base.metadata here, kept in a module of its own (break-glass reviews).
from security_api.access.break_glass_models import BreakGlassReview  # noqa: E402,F401
from security_api.access.drift_models import DriftFinding, DriftSchedule  # noqa: E402,F401
