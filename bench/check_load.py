"""The set-up of the GET /v1/check figure: an internal tool asks whether a person holds a grant.

/v1/check is what internal tools call on every decision of their own, so its cost next to
/v1/ping is a figure of issue 13. The caller is a service account (role tools/ci) that holds
`security-api.check` by a standing rule, the way tests and deployments grant it; the subject
is a person holding an active grant of an auto permission (provisioner none), so the answer
walks the whole path: the caller's token and permission, the subject, its rules, its grant.
"""
from __future__ import annotations

import json
import urllib.parse

import common

CHECK_PERMISSION = "security-api.check"
TOOL_ROLE, TOOL_SUBROLE = "tools", "ci"
PERSON_ROLE, PERSON_SUBROLE = "developer", "backend"
PERSON_PREFIX, TOOL_PREFIX, GRANT_PREFIX = "bench-person", "bench-tool", "bench-vpn"


class CheckSeed:
    """In-process seeding (after init-db): the tool, its standing rule, the person, a permission."""

    def __init__(self):
        self.tool_token = self.person_token = self.permission = ""
        self.person = common.person_username(PERSON_PREFIX, 0)

    def __call__(self, env: dict) -> None:
        from security_api import audit
        from security_api.access.catalog import ensure_rule
        from security_api.clock import utcnow
        from security_api.enums import PolicyMode, UserKind

        app = common.build_app(env)
        try:
            [self.person_token] = common.seed_people(app, count=1, role=PERSON_ROLE,
                                                     subrole=PERSON_SUBROLE, prefix=PERSON_PREFIX)
            [self.permission] = common.seed_auto_permissions(
                app, count=1, role=PERSON_ROLE, subrole=PERSON_SUBROLE, prefix=GRANT_PREFIX)
            [self.tool_token] = common.seed_people(app, count=1, role=TOOL_ROLE,
                                                   subrole=TOOL_SUBROLE, prefix=TOOL_PREFIX,
                                                   kind=UserKind.SERVICE)
            with app.extensions["security_api"].session_factory() as session:
                ensure_rule(session, permission=CHECK_PERMISSION, role=TOOL_ROLE,
                            subrole=TOOL_SUBROLE, mode=PolicyMode.STANDING, actor="bench",
                            origin=audit.Origin(), now=utcnow())
                session.commit()
        finally:
            common.dispose(app)

    @property
    def path(self) -> str:
        """`/v1/check?user=<the person>&permission=<the permission>`."""
        query = urllib.parse.urlencode({"user": self.person, "permission": self.permission})
        return f"/v1/check?{query}"

    def load(self) -> common.Load:
        """The load: the tool's bearer token on the check path."""
        return common.Load(self.path, headers=(("Authorization", f"Bearer {self.tool_token}"),))

    def ready(self, base_url: str) -> None:
        """The person requests the permission (auto: active at once); check must then say yes."""
        common.expect(common.call(base_url, "/v1/requests", method="POST",
                                  body=json.dumps({"permission": self.permission,
                                                   "justification": "bench"}).encode(),
                                  headers={"Authorization": f"Bearer {self.person_token}",
                                           "Content-Type": "application/json"}),
                      201, "POST /v1/requests (the checked person's grant)")
        answer = common.expect(common.call(base_url, self.path, headers={
            "Authorization": f"Bearer {self.tool_token}"}), 200, "GET /v1/check")
        if answer.get("allowed") is not True:
            raise SystemExit(f"GET /v1/check answered {answer}, expected allowed: true")
