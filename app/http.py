"""HTTP plumbing shared by the routes: fast JSON answers, body reading, auth, OpenAPI bodies."""

import hmac
from typing import Annotated, Any

import orjson
from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, TypeAdapter

from app.engine import Engine
from app.errors import Conflict, Forbidden, Unauthorized
from app.json_body import BodyDecoder
from app.schemas import ErrorDetail
from app.settings import Settings, normalize_origin
from app.tensors import Limits, check_json_content_type


class FastJSONResponse(JSONResponse):
    """A JSON answer serialised by orjson, numpy arrays included, without re-validation.

    A JSONResponse subclass so that OpenAPI documents the route's `responses` model as JSON."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


# Dependencies are `async def` on purpose: FastAPI runs a plain `def` dependency in its thread
# pool, two thread hops and GIL hand-offs per request for a dictionary lookup.


async def get_engine(request: Request) -> Engine:
    """The app's engine."""
    engine: Engine = request.app.state.engine
    return engine


async def get_settings(request: Request) -> Settings:
    """The app's settings."""
    settings: Settings = request.app.state.settings
    return settings


async def get_limits(request: Request) -> Limits:
    """The app's tensor limits."""
    limits: Limits = request.app.state.limits
    return limits


def _is_foreign_origin(request: Request, origins: list[str], allowed: tuple[str, ...]) -> bool:
    """Whether the request's `Origin` names another origin than the one it was sent to (the
    connection's scheme and the Host header) and none of `allowed` (LENET_CORS_ORIGINS)."""
    if len(origins) != 1:
        return True  # two Origin headers: no browser sends that
    try:
        origin = normalize_origin(origins[0])  # "null" (sandboxed pages, files) fails here
        own = normalize_origin(f"{request.url.scheme}://{request.headers.get('host', '')}")
    except ValueError:
        return True
    return origin != own and origin not in allowed


# The OpenAPI security scheme of the token: FastAPI documents it (and `security` on every
# operation that depends on `require_token`) from this dependency, so /docs can "Authorize".
bearer_scheme = HTTPBearer(
    scheme_name="bearer",
    description="LENET_API_TOKEN, when the service has one; reading never needs it.",
    auto_error=False,
)


async def require_trainer(request: Request) -> None:
    """Refuse (409) a change on a predictor: it follows the trainer's versions, and only the
    trainer changes anything. A sub-dependency of `require_token`, so every route that needs the
    token (the routes that change anything) is refused on a predictor, and only those."""
    settings: Settings = request.app.state.settings
    if settings.role == "predictor":
        raise Conflict(
            "this server is a predictor (LENET_ROLE=predictor): it serves the versions the "
            "trainer publishes and changes nothing; send training and other changes to the trainer"
        )


async def require_token(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    _role: None = Depends(require_trainer),
) -> None:
    """Guard every route that changes anything: on a predictor, 409 (`require_trainer`); a
    cross-site request (its Origin is another site's) is 403, with or without a token; then,
    when LENET_API_TOKEN is set, a request without `Bearer <token>` is 401."""
    settings: Settings = request.app.state.settings
    # A browser sends Origin with every cross-site POST, preflight or not (an empty or
    # text/plain body needs none); clients that are not browsers send none and pass.
    origins = request.headers.getlist("origin")
    if origins and _is_foreign_origin(request, origins, settings.cors_origins):
        raise Forbidden(
            f"cross-site request refused: Origin {origins[0][:200]!r} is neither this "
            "server's origin nor one in LENET_CORS_ORIGINS"
        )
    if settings.api_token is None:
        return
    expected = settings.api_token.get_secret_value().encode()
    # compare_digest runs in time independent of where the strings differ.
    given = bearer.credentials.strip().encode() if bearer is not None else b""
    if not hmac.compare_digest(given, expected):
        raise Unauthorized("a valid 'Authorization: Bearer <token>' header is required")


async def read_json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object, after the content type check (415), inflated (gzip or
    deflate) and parsed (400), its `inputs` one array; large bodies off the event loop."""
    check_json_content_type(request.headers.get("content-type"))
    decoder: BodyDecoder = request.app.state.body_decoder
    return await decoder.decode(await request.body(), request.headers.get("content-encoding"))


EngineDep = Annotated[Engine, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
LimitsDep = Annotated[Limits, Depends(get_limits)]
AuthDep = Depends(require_token)

COMPONENT_REF = "#/components/schemas/{model}"

# JSON schemas of bodies that routes read themselves (for speed, or for strict JSON-mode
# validation); `app.main` adds them, with their $defs, to the OpenAPI components.
DOCUMENTED_BODIES: dict[str, dict[str, Any]] = {}


def json_body_doc(
    schema_source: type[BaseModel] | TypeAdapter[Any], name: str | None = None
) -> dict[str, Any]:
    """`openapi_extra` documenting a JSON body that the route reads itself."""
    if isinstance(schema_source, TypeAdapter):
        assert name is not None, "a TypeAdapter has no name of its own"
        schema = schema_source.json_schema(ref_template=COMPONENT_REF)
    else:
        name = name or schema_source.__name__
        schema = schema_source.model_json_schema(ref_template=COMPONENT_REF)
    DOCUMENTED_BODIES[name] = schema
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": COMPONENT_REF.format(model=name)}}},
        }
    }


def error_responses(reasons: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the error statuses a route answers, each in FastAPI's shape."""
    return {
        status: {"model": ErrorDetail, "description": reason} for status, reason in reasons.items()
    }
