"""The words of a notification: mail subject and body, chat text, and the cleaning of user text.

Apart from the channels and the Notifier so the wording can be read (and tested) as text: every
value from a request passes clean() (one line, no controls or bidi overrides, capped) and,
for chat, slack_escape().
"""
from __future__ import annotations

import re
import unicodedata

SUBJECT_PREFIX = "[Security API]"
MAX_FIELD = 200
MAX_JUSTIFICATION = 1000
# Bidirectional overrides can make a subject read differently from what it says.
BIDI_CONTROLS = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f")
WHITESPACE_RUNS = re.compile(r"\s+")
PENDING, DECIDED = "request.pending", "request.decided"
# A read-back contradicted a grant or a revoke, or could not be made (see access/readback.py).
VERIFY_FAILED = "provisioning.verify_failed"
READBACK_WORDS = {
    ("grant", "contradicted"): "was not found at the target after the grant; the grant failed "
                               "and was undone",
    ("revoke", "contradicted"): "is still present at the target after the revoke; the revoke "
                                "is retried",
    ("grant", "unavailable"): "could not be read back after the grant; it stays unverified",
    ("revoke", "unavailable"): "could not be read back after the revoke; it stays unverified"}
# A new drift finding (access/drift.py); its payload is the finding, not a request.
DRIFT = "drift.found"
DRIFT_WORDS = {"missing": "an active grant is missing at its target",
               "orphaned": "an entry this service made has no active grant"}
# pendingexp: the holder of a grant, shortly before it ends (the link is the portal's page).
EXPIRY_WARNING = "request.expiry_warning"
BREAK_GLASS, REVIEW_OVERDUE = "request.break_glass", "request.review_overdue"
REVIEWED = "request.reviewed"
STATUS_WORDS = {"active": "approved", "denied": "denied", "failed": "approved, but provisioning failed",
                "cancelled": "cancelled", "revoked": "revoked", "expired": "expired"}
# pendingexp: an expired request says which way it expired.
EXPIRED_WORDS = {"not_decided": "expired before anyone decided it", "ended": "expired"}


def clean(value, *, limit: int = MAX_FIELD) -> str:
    """Make user text one line: control characters become spaces, runs collapse, length capped."""
    text = "" if value is None else str(value)
    text = "".join(" " if _is_control(ch) else ch for ch in text)
    text = WHITESPACE_RUNS.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def slack_escape(text: str) -> str:
    """Escape the three characters Slack treats as markup (mentions, links)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def pending_subject(request: dict) -> str:
    """Return e.g. '[Security API] alice requests vpn'."""
    return f"{SUBJECT_PREFIX} {_requester(request)} requests {clean(request.get('permission'))}"


def decided_subject(request: dict) -> str:
    """Return e.g. '[Security API] alice's request for vpn: approved'."""
    return (f"{SUBJECT_PREFIX} {_requester(request)}'s request for "
            f"{clean(request.get('permission'))}: {_status_word(request)}")


def pending_body(request: dict, *, link: str) -> str:
    """Return the plain-text email for approvers."""
    return "\n".join([
        f"{_requester(request)} requests {clean(request.get('permission'))} "
        f"for {clean(request.get('duration_minutes'))} minutes.",
        "",
        f"Justification: {_justification(request)}",
        f"Status: {clean(request.get('status'))}",
        "",
        f"Review it: {link}",
    ]) + "\n"


def decided_body(request: dict, *, link: str) -> str:
    """Return the plain-text email for the requester."""
    lines = [f"Your request for {clean(request.get('permission'))} is {_status_word(request)}.", ""]
    lines += [f"{name} decided: {word}" + (f" ({comment})" if comment else "")
              for name, word, comment in _decisions(request)]
    if request.get("expires_at"):
        lines.append(f"Access ends at {clean(request['expires_at'])}.")
    lines += [f"Justification: {_justification(request)}", "", f"Details: {link}"]
    return "\n".join(lines) + "\n"


def pending_chat(request: dict, *, link: str) -> str:
    """Return the Slack text for a new pending request."""
    return (f"*Access request pending*: {slack_escape(_requester(request))} requests "
            f"`{slack_escape(clean(request.get('permission')))}` for "
            f"{slack_escape(clean(request.get('duration_minutes')))} minutes\n"
            f"Justification: {slack_escape(_justification(request))}\n"
            f"<{link}|Review request>")


def decided_chat(request: dict, *, link: str) -> str:
    """Return the Slack text for a decided request."""
    deciders = ", ".join(f"{name} ({word})" for name, word, _ in _decisions(request))
    return (f"*Access request {slack_escape(_status_word(request))}*: "
            f"{slack_escape(_requester(request))} for "
            f"`{slack_escape(clean(request.get('permission')))}`"
            + (f" by {slack_escape(deciders)}" if deciders else "")
            + f"\nJustification: {slack_escape(_justification(request))}\n<{link}|View request>")


def verify_failed_texts(request: dict, *, link: str) -> tuple[str, str, str]:
    """Return (mail subject, mail body, chat text) for a read-back that did not confirm."""
    readback = request.get("readback") if isinstance(request.get("readback"), dict) else {}
    words = READBACK_WORDS.get((readback.get("step"), readback.get("outcome")),
                               "could not be confirmed at the target")
    what = f"{_requester(request)}'s access to {clean(request.get('permission'))}"
    subject = f"{SUBJECT_PREFIX} read-back failed: {what}"
    body = f"{what} {words}.\n\nDetails: {link}\n"
    chat = (f"*Provisioning read-back failed*: {slack_escape(what)} {slack_escape(words)}\n"
            f"<{link}|View request>")
    return subject, body, chat


def drift_texts(finding: dict, *, link: str) -> tuple[str, str, str]:
    """Return (mail subject, mail body, chat text) of a new drift finding."""
    kind = clean(finding.get("kind"))
    what = DRIFT_WORDS.get(kind, kind)
    subject = f"{SUBJECT_PREFIX} Drift: {what} ({clean(finding.get('provisioner'))})"
    facts = [f"Kind: {kind}", f"Provisioner: {clean(finding.get('provisioner'))}",
             f"Target: {clean(finding.get('target'))}",
             f"Permission: {clean(finding.get('permission')) or '(none)'}",
             f"Request: {clean(finding.get('request_id')) or '(none)'}",
             f"Entry: {clean(finding.get('description'), limit=MAX_JUSTIFICATION)}"]
    body = "\n".join([f"Drift found: {what}.", "", *facts, "",
                      f"Review and fix: {link}"]) + "\n"
    chat = (f"*Drift found*: {slack_escape(what)}\n"
            + "\n".join(slack_escape(fact) for fact in facts) + f"\n<{link}|Review drift>")
    return subject, body, chat


def expiry_warning_texts(request: dict, *, link: str) -> tuple[str, str, str]:
    """Return (subject, body, chat) warning the holder that a grant ends soon, with where to extend."""
    permission, ends = clean(request.get("permission")), clean(request.get("expires_at"))
    subject = f"{SUBJECT_PREFIX} your access to {permission} ends at {ends}"
    body = "\n".join([f"Your access to {permission} ends at {ends}.", "",
                      f"To keep it, extend the grant: {link}"]) + "\n"
    chat = (f"*Access ending soon*: {slack_escape(_requester(request))}'s grant of "
            f"`{slack_escape(permission)}` ends at {slack_escape(ends)}\n<{link}|Extend it>")
    return subject, body, chat


def break_glass_texts(kind: str, request: dict, *, link: str) -> tuple[str, str, str]:
    """Return (subject, body, chat) for a break-glass use, its overdue review, or its verdict."""
    who, what = _requester(request), clean(request.get("permission"))
    review = request.get("review") if isinstance(request.get("review"), dict) else {}
    due, verdict = clean(review.get("due_at")), clean(review.get("verdict"))
    if kind == BREAK_GLASS:
        head = f"{who} used break-glass for {what}"
        lines = [f"{head} ({clean(request.get('duration_minutes'))} minutes), granted at once.",
                 f"Justification: {_justification(request)}",
                 f"Review it (justified or unjustified) by {due}."]
    elif kind == REVIEW_OVERDUE:
        head = f"Review overdue: {who}'s break-glass use of {what}"
        lines = [f"{head}; it was due at {due}.", f"Justification: {_justification(request)}"]
    else:
        head = f"{who}'s break-glass use of {what} was reviewed: {verdict}"
        lines = [f"{head} by {clean(review.get('by'))}.",
                 f"Comment: {clean(review.get('comment'), limit=MAX_JUSTIFICATION) or '(none)'}",
                 f"Status: {_status_word(request)}"]
    body = "\n".join([*lines, "", f"Details: {link}"]) + "\n"
    chat = f"*{slack_escape(head)}*\n" + "\n".join(slack_escape(line) for line in lines[1:]) \
        + f"\n<{link}|View request>"
    return f"{SUBJECT_PREFIX} {head}", body, chat


def texts(kind: str, request: dict, *, link: str) -> tuple[str, str, str]:
    """Return (mail subject, mail body, chat text) of one notification kind."""
    if kind == VERIFY_FAILED:
        return verify_failed_texts(request, link=link)
    if kind == DRIFT:
        return drift_texts(request, link=link)
    if kind == EXPIRY_WARNING:
        return expiry_warning_texts(request, link=link)
    if kind in (BREAK_GLASS, REVIEW_OVERDUE, REVIEWED):
        return break_glass_texts(kind, request, link=link)
    if kind == PENDING:
        return (pending_subject(request), pending_body(request, link=link),
                pending_chat(request, link=link))
    return (decided_subject(request), decided_body(request, link=link),
            decided_chat(request, link=link))


def _requester(request: dict) -> str:
    requester = request.get("requester")
    if isinstance(requester, dict):
        requester = requester.get("username")
    return clean(requester) or "someone"


def _justification(request: dict) -> str:
    return clean(request.get("justification"), limit=MAX_JUSTIFICATION) or "(none)"


def _status_word(request: dict) -> str:
    status = clean(request.get("status"))
    if status == "expired" and request.get("expired_reason") in EXPIRED_WORDS:
        return EXPIRED_WORDS[request["expired_reason"]]
    return STATUS_WORDS.get(status, status)


def _decisions(request: dict) -> list[tuple[str, str, str]]:
    """Return (approver, decision, comment) for each approval, all cleaned."""
    approvals = request.get("approvals") or []
    return [(clean(a.get("approver")) or "someone", clean(a.get("decision")),
             clean(a.get("comment"), limit=MAX_JUSTIFICATION))
            for a in approvals if isinstance(a, dict)]


def _is_control(ch: str) -> bool:
    # Cc: C0/C1 controls (CR, LF, NUL...); Zl/Zp: Unicode line and paragraph separators.
    return unicodedata.category(ch) in ("Cc", "Zl", "Zp") or ch in BIDI_CONTROLS
