"""One exception tree; each class carries its HTTP status and stable error code."""
from __future__ import annotations

INVALID_CREDENTIALS_MESSAGE = "(d'oh!) Wrong user, password, totp value or maybe user is not active."


class ApiError(Exception):
    """Base of every error the API reports to a client."""

    status = 500
    code = "internal_error"
    default_message = "Internal error."

    def __init__(self, message: str | None = None, *, code: str | None = None,
                 errors: list[dict] | None = None, headers: dict | None = None):
        super().__init__(message or self.default_message)
        self.message = message or self.default_message
        self.code = code or self.code
        self.errors = errors
        self.headers = headers or {}


class BadRequest(ApiError):
    status, code, default_message = 400, "bad_request", "Malformed request."


class Unauthenticated(ApiError):
    status, code, default_message = 401, "invalid_credentials", INVALID_CREDENTIALS_MESSAGE


class StepUpRequired(Unauthenticated):
    """The permission needs a fresh code from the caller's authenticator app (step-up)."""

    code = "step_up_required"
    default_message = ("This permission needs step-up: send a current code from your "
                       "authenticator app as \"totp\".")


class InvalidStepUp(Unauthenticated):
    """The step-up code was malformed, wrong or already used, or the caller cannot step up."""

    code = "invalid_step_up"
    default_message = "The step-up code is wrong or was already used."


class Forbidden(ApiError):
    status, code, default_message = 403, "forbidden", "You are not allowed to do this."


class NotFound(ApiError):
    status, code, default_message = 404, "not_found", "Not found."


class Conflict(ApiError):
    status, code, default_message = 409, "conflict", "The object is not in a state that allows this."


class InvalidParams(ApiError):
    status, code, default_message = 412, "invalid_params", "Missing or invalid parameters."

    @classmethod
    def one(cls, field: str, problem: str, *, code: str | None = None) -> InvalidParams:
        """Build the error for a single bad field."""
        return cls(f"{field}: {problem}", code=code, errors=[{"field": field, "problem": problem}])


class Throttled(ApiError):
    status, code, default_message = 429, "throttled", "Too many requests; try again later."

    def __init__(self, message: str | None = None, *, retry_after: int, code: str | None = None):
        super().__init__(message, code=code, headers={"Retry-After": str(max(1, int(retry_after)))})
        self.retry_after = retry_after


class ServiceUnavailable(ApiError):
    status, code = 503, "service_unavailable"
    default_message = "A dependency is unavailable; try again shortly."
