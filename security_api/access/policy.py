"""The policy engine: given a user's role and a permission's rules, the decision. Pure."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from security_api.enums import PolicyMode

WILDCARD = "*"


@dataclass(frozen=True)
class Rule:
    """A policy rule as the engine sees it."""

    id: str
    permission: str
    role: str
    subrole: str
    mode: PolicyMode
    max_duration_minutes: int | None = None
    approvers: tuple[str, ...] = ()
    approvals_required: int = 1
    pending_ttl_minutes: int = 1440  # how long a request may wait for a decision
    # break_glass: how long the approvers have to review a self-granted use.
    review_within_minutes: int = 1440


@dataclass(frozen=True)
class Decision:
    """What a user may do with a permission, and the rule that says so."""

    mode: PolicyMode | None
    rule: Rule | None
    max_duration_minutes: int | None

    @property
    def requestable(self) -> bool:
        """Tell whether a request can be made (auto, approval or break_glass)."""
        return self.mode in (PolicyMode.AUTO, PolicyMode.APPROVAL, PolicyMode.BREAK_GLASS)


NOT_REQUESTABLE = Decision(None, None, None)


def specificity(rule: Rule, *, role: str, subrole: str) -> int | None:
    """Rank how precisely a rule names the user: 2 role/subrole, 1 role/*, 0 */*; None if not."""
    if rule.role == role and rule.subrole == subrole:
        return 2
    if rule.role == role and rule.subrole == WILDCARD:
        return 1
    if rule.role == WILDCARD and rule.subrole == WILDCARD:
        return 0
    return None


def decide(*, role: str, subrole: str, permission: str, permission_max_minutes: int,
           candidates: Iterable[Rule]) -> Decision:
    """Return the decision of the most specific rule for this permission, if any matches."""
    best, best_rank = None, -1
    for rule in candidates:
        if rule.permission != permission:
            continue
        rank = specificity(rule, role=role, subrole=subrole)
        if rank is not None and rank > best_rank:
            best, best_rank = rule, rank
    if best is None:
        return NOT_REQUESTABLE
    limit = permission_max_minutes
    if best.max_duration_minutes is not None:
        limit = min(limit, best.max_duration_minutes)
    return Decision(best.mode, best, limit)


def approver_matches(entry: str, *, role: str, subrole: str) -> bool:
    """Tell whether an approvers entry (`role` or `role/subrole`) names this user."""
    entry_role, _, entry_subrole = entry.partition("/")
    return entry_role == role and (not entry_subrole or entry_subrole == subrole)
