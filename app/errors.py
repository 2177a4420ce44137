"""Domain errors. Routes, the codecs and the engine raise these; `app.http_errors` turns each
into its HTTP answer in one place, so no module below the routes builds an answer itself."""

from collections.abc import Mapping


class LenetError(Exception):
    """Base of every error we answer deliberately; `status_code` is the HTTP status."""

    status_code = 400

    def __init__(self, detail: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers: Mapping[str, str] = headers or {}


class BadRequest(LenetError):
    """The request cannot be read at all (malformed JSON or headers)."""

    status_code = 400


class Unauthorized(LenetError):
    """A mutating request came without the right bearer token."""

    status_code = 401


class NotFound(LenetError):
    """An unknown parameter name, checkpoint id or model."""

    status_code = 404


class Conflict(LenetError):
    """The request cannot run in the service's present state (no gradients to step with)."""

    status_code = 409


class PayloadTooLarge(LenetError):
    """The body is larger than the body limit."""

    status_code = 413


class UnsupportedMediaType(LenetError):
    """The body is not of the content type the route reads."""

    status_code = 415


class InvalidInput(LenetError):
    """The body is well-formed but its content is wrong: shapes, values, types, limits."""

    status_code = 422


class NonFiniteStep(InvalidInput):
    """A training step would have produced a non-finite loss, gradient or weight."""


class DeviceUnavailable(LenetError):
    """The device failed (out of memory, say)."""

    status_code = 503


class NotReady(LenetError):
    """The model is not serving: before start-up has finished, or after shutdown began."""

    status_code = 503


class Forbidden(LenetError):
    """A cross-site request to a route that changes anything (its Origin is another site's)."""

    status_code = 403


class RequestTimeout(LenetError):
    """The body did not arrive whole within LENET_BODY_TIMEOUT_S of the end of the headers."""

    status_code = 408


class HeadersTooLarge(LenetError):
    """The request's headers are larger than the server reads."""

    status_code = 431


class InsufficientStorage(LenetError):
    """The checkpoint folder cannot be written (read-only, full, or not a folder)."""

    status_code = 507
