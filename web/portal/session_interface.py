"""Flask's session, kept on the server: the `__Host-session` cookie carries only a random id."""
from __future__ import annotations

from flask import Flask, Request, Response
from flask.sessions import SessionInterface, SessionMixin
from werkzeug.datastructures import CallbackDict

from security_api.accounts.portal_sessions import PortalSessionStore, StoredSession, new_session_id
from security_api.accounts.stores import StoreUnavailable
from security_api.clock import utcnow

COOKIE_NAME = "__Host-session"
PORTAL_PREFIX = "/portal"
# Rewrite the row at most this often when only the idle clock moved.
TOUCH_SECONDS = 60


class ServerSession(CallbackDict, SessionMixin):
    """The session's data, plus what the interface needs to save it."""

    def __init__(self, initial=None, *, session_id: str | None = None,
                 stored: StoredSession | None = None):
        def on_update(this):
            this.modified = True

        super().__init__(initial, on_update)
        self.session_id = session_id
        self.stored = stored
        self.modified = False
        self.ended_id: str | None = None
        self.rotate = False
        self.store_down = False

    def end(self) -> None:
        """Forget this session at once (sign-out, revoked sign-in); later data starts a new one."""
        self.clear()
        self.ended_id, self.session_id, self.stored = self.session_id, None, None

    def regenerate(self) -> None:
        """Give the session a new id, e.g. on sign-in, so a planted cookie is worth nothing."""
        self.rotate = True
        self.modified = True


class ServerSessionInterface(SessionInterface):
    """Load and save portal sessions through a PortalSessionStore; the API never gets one."""

    def __init__(self, store: PortalSessionStore, *, secure: bool):
        self.store = store
        self.secure = secure

    def open_session(self, app: Flask, request: Request) -> ServerSession | None:
        if not request.path.startswith(PORTAL_PREFIX):
            return self.null_session_class()
        session_id = request.cookies.get(COOKIE_NAME)
        try:
            stored = self.store.load(session_id, now=utcnow()) if session_id else None
        except StoreUnavailable:
            # Not here: Flask would answer a bare 500. The page says 503 (blueprint.py).
            unavailable = ServerSession()
            unavailable.store_down = True
            return unavailable
        if stored is None:
            return ServerSession()
        return ServerSession(stored.data, session_id=session_id, stored=stored)

    def save_session(self, app: Flask, session, response: Response) -> None:
        if not isinstance(session, ServerSession) or session.store_down:
            return
        if session.ended_id:
            self.store.end(session.ended_id)
            if not session:
                self._clear_cookie(response)
                return
        now = utcnow()
        if not session and session.stored is None:
            return  # nothing worth keeping: no row, no cookie
        touched = session.stored is not None and \
            (now - session.stored.last_seen_at).total_seconds() >= TOUCH_SECONDS
        if not (session.modified or session.rotate or touched or session.stored is None):
            return
        if session.rotate or session.stored is None or not session.session_id:
            if session.session_id:
                self.store.end(session.session_id)
            session.session_id, created_at = new_session_id(), now
            # Sessions are born here, so dead ones are swept here: one indexed delete.
            self.store.purge(now=now)
        else:
            created_at = session.stored.created_at
        self.store.save(session.session_id, StoredSession(dict(session), created_at, now))
        response.set_cookie(COOKIE_NAME, session.session_id, httponly=True, secure=self.secure,
                            samesite="Lax", path="/")
        response.vary.add("Cookie")

    def _clear_cookie(self, response: Response) -> None:
        response.delete_cookie(COOKIE_NAME, path="/", secure=self.secure, httponly=True,
                               samesite="Lax")
