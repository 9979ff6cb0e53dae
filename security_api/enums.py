"""Named values instead of bare strings."""
from enum import StrEnum


class UserKind(StrEnum):
    PERSON = "person"
    SERVICE = "service"


class PolicyMode(StrEnum):
    STANDING = "standing"
    AUTO = "auto"
    APPROVAL = "approval"
    # Granted at once to the requester (justification and step-up always required), then
    # reviewed after the fact by an approver of the rule.
    BREAK_GLASS = "break_glass"


class RequestStatus(StrEnum):
    PENDING = "pending"
    # Internal: approved, the provisioner's grant is running. Readers see "pending".
    GRANTING = "granting"
    ACTIVE = "active"
    DENIED = "denied"
    CANCELLED = "cancelled"
    FAILED = "failed"
    EXPIRED = "expired"
    REVOKED = "revoked"


class ExpiredReason(StrEnum):
    """Why a request is `expired`: shown as the request's `expired_reason`."""

    NOT_DECIDED = "not_decided"  # pending past its rule's pending_ttl_minutes
    ENDED = "ended"  # an active grant reached its expires_at


class ProvisioningState(StrEnum):
    """An outside call that is owed: running now, or failed and to be tried again."""

    REVOKING = "revoking"
    REVOKE_FAILED = "revoke_failed"


class ProvisioningAction(StrEnum):
    """The outside calls, as recorded under a request's `provisioning` and in audit details."""

    GRANT = "grant"
    # Undo of a grant that failed, timed out or was abandoned by a crashed worker.
    CLEANUP = "cleanup"
    # End of a grant that was active (revoked or expired).
    REVOKE = "revoke"


class ReviewVerdict(StrEnum):
    """An after-the-fact review of a break-glass grant."""

    JUSTIFIED = "justified"
    UNJUSTIFIED = "unjustified"


class Decision(StrEnum):
    APPROVE = "approve"
    DENY = "deny"


class AuditAction(StrEnum):
    LOGIN_SUCCEEDED = "login.succeeded"
    LOGIN_FAILED = "login.failed"
    LOGIN_LOCKED = "login.locked"
    # An attempt (login, enroll, confirm, password change) refused because the username is
    # locked, or full of attempts still running: no secret was checked.
    LOGIN_REFUSED_LOCKED = "login.refused_locked"
    RECOVERY_CODE_USED = "login.recovery_code_used"
    TOTP_ENROLL_STARTED = "totp.enroll_started"
    TOTP_ENROLLED = "totp.enrolled"
    # A right password on enroll or confirm: a password check without a second factor.
    TOTP_PASSWORD_CHECKED = "totp.password_checked"
    TOKEN_REFRESHED = "token.refreshed"
    REFRESH_REUSE_DETECTED = "token.refresh_reuse_detected"
    TOKEN_REFRESH_REFUSED = "token.refresh_refused"
    LOGOUT = "logout"
    PASSWORD_CHANGED = "password.changed"
    PASSWORD_CHANGE_FAILED = "password.change_failed"
    USER_CREATED = "user.created"
    ROLE_CREATED = "role.created"
    REQUEST_CREATED = "request.created"
    REQUEST_APPROVED = "request.approved"
    REQUEST_ACTIVATED = "request.activated"
    REQUEST_DENIED = "request.denied"
    REQUEST_CANCELLED = "request.cancelled"
    REQUEST_FAILED = "request.failed"
    REQUEST_RETRIED = "request.retried"
    REQUEST_REVOKED = "request.revoked"
    REQUEST_EXPIRED = "request.expired"
    # A grant's end moved (auto, or an extension approved in time): target is the grant.
    REQUEST_EXTENDED = "request.extended"
    # An extension waits for approval: target is the grant, details name the extension.
    REQUEST_EXTENSION_REQUESTED = "request.extension_requested"
    REQUEST_EXPIRY_WARNING_SENT = "request.expiry_warning_sent"
    REQUEST_BREAK_GLASS = "request.break_glass"
    REQUEST_REVIEWED = "request.reviewed"
    REQUEST_REVIEW_OVERDUE = "request.review_overdue"
    PROVISIONING_SUCCEEDED = "provisioning.succeeded"
    PROVISIONING_FAILED = "provisioning.failed"
    # Read-back (access/readback.py): the target confirmed a grant or a revoke, or it did not
    # (contradicted it, or could not be read; details say which).
    PROVISIONING_VERIFIED = "provisioning.verified"
    PROVISIONING_VERIFY_FAILED = "provisioning.verify_failed"
    PERMISSION_CREATED = "permission.created"
    PERMISSION_UPDATED = "permission.updated"
    PERMISSION_DELETED = "permission.deleted"
    POLICY_CREATED = "policy.created"
    POLICY_UPDATED = "policy.updated"
    POLICY_DELETED = "policy.deleted"
    POLICY_FILE_APPLIED = "policy.file_applied"
    ROLE_UPDATED = "role.updated"
    ROLE_DELETED = "role.deleted"
    SUBROLE_DELETED = "subrole.deleted"
    USER_UPDATED = "user.updated"
    USER_TOTP_RESET = "user.totp_reset"
    USER_PASSWORD_RESET = "user.password_reset"
    USER_UNLOCKED = "user.unlocked"
    STARTUP_TASK_SUCCEEDED = "startup.task_succeeded"
    STARTUP_TASK_FAILED = "startup.task_failed"
    # A button pressed in Slack, whatever came of it (details: outcome, action, slack_user_id).
    SLACK_INTERACTION = "slack.interaction"
    # stepup: a risky action refused for want of a good step-up code (details: reason, purpose).
    STEP_UP_REFUSED = "step_up.refused"
    # Drift (access/drift.py): a new finding, one no longer seen, a repair and a failed one.
    DRIFT_FOUND = "drift.found"
    DRIFT_RESOLVED = "drift.resolved"
    DRIFT_FIXED = "drift.fixed"
    DRIFT_FIX_FAILED = "drift.fix_failed"
    # conflicts: separation of duties (conflict sets) and the requests they refuse
    REQUEST_REFUSED_CONFLICT = "request.refused_conflict"
    CONFLICT_CREATED = "conflict.created"
    CONFLICT_UPDATED = "conflict.updated"
    CONFLICT_DELETED = "conflict.deleted"


class DriftKind(StrEnum):
    # An active grant whose entry is not at the target.
    MISSING = "missing"
    # An entry this service made (its marker) that no active grant explains.
    ORPHANED = "orphaned"


class FailureReason(StrEnum):
    """Why a sign-in failed: recorded in the audit log, never told to the client."""

    UNKNOWN_USER = "unknown_user"
    BAD_PASSWORD = "bad_password"
    INACTIVE = "inactive"
    BAD_SECOND_FACTOR = "bad_second_factor"
    MISSING_SECOND_FACTOR = "missing_second_factor"
    TOTP_REPLAYED = "totp_replayed"
    # Enroll or confirm with the right password on an account whose 2FA is already on.
    TOTP_ALREADY_ENROLLED = "totp_already_enrolled"
