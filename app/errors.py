"""Domain errors. Routes and the engine raise these; one handler in `app.main` turns them into
HTTP answers, so no module below the routes needs to know about HTTP status codes' wording."""


class LenetError(Exception):
    """Base of every error we answer deliberately; `status_code` is the HTTP status."""

    status_code = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadRequest(LenetError):
    """The request cannot be read at all (malformed JSON or headers)."""

    status_code = 400


class Unauthorized(LenetError):
    """A mutating request came without the right bearer token."""

    status_code = 401


class NotFound(LenetError):
    """An unknown parameter name, checkpoint id or model."""

    status_code = 404


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
    """The device failed (out of memory, say) or the model is not ready yet."""

    status_code = 503


class InsufficientStorage(LenetError):
    """The checkpoint folder cannot be written (read-only, full, or not a folder)."""

    status_code = 507
