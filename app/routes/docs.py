"""GET /docs (Swagger UI) and GET /redoc (ReDoc), from assets in the package: they work offline.

The assets are vendored under `app/static/vendor/` (versions and licences in its README) and
served by the page's `/static` mount. Each page has a Content-Security-Policy of its own: the
site-wide `default-src 'self'` would block Swagger UI's inline start-up script, so that script
is allowed by its SHA-256 hash and nothing else inline runs; both renderers set inline styles,
and ReDoc runs its search in a `blob:` worker.
"""

import base64
import hashlib
import re

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse

VENDOR = "/static/vendor"
SWAGGER_JS = f"{VENDOR}/swagger-ui/swagger-ui-bundle.js"
SWAGGER_CSS = f"{VENDOR}/swagger-ui/swagger-ui.css"
FAVICON = f"{VENDOR}/swagger-ui/favicon-32x32.png"
REDOC_JS = f"{VENDOR}/redoc/redoc.standalone.js"

_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)
_COMMON_POLICY = (
    "default-src 'self'",
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data:",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
)

router = APIRouter(include_in_schema=False)


def _with_policy(page: HTMLResponse, *directives: str) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = "; ".join((*_COMMON_POLICY, *directives))
    return page


def _script_hashes(html: str) -> str:
    """CSP sources for each inline script of `html`, by the SHA-256 of its text."""
    return " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()}'"
        for text in _INLINE_SCRIPT.findall(html)
    )


@router.api_route("/docs", methods=["GET", "HEAD"])
async def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI for the OpenAPI schema; "Authorize" takes LENET_API_TOKEN."""
    root = request.scope.get("root_path", "")
    page = get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=root + SWAGGER_JS,
        swagger_css_url=root + SWAGGER_CSS,
        swagger_favicon_url=root + FAVICON,
        # Swagger UI would send the schema to validator.swagger.io for its badge.
        swagger_ui_parameters={"validatorUrl": None},
    )
    html = bytes(page.body).decode()
    return _with_policy(page, f"script-src 'self' {_script_hashes(html)}")


@router.api_route("/redoc", methods=["GET", "HEAD"])
async def redoc(request: Request) -> HTMLResponse:
    """ReDoc for the OpenAPI schema."""
    root = request.scope.get("root_path", "")
    page = get_redoc_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=root + REDOC_JS,
        redoc_favicon_url=root + FAVICON,
        with_google_fonts=False,
    )
    return _with_policy(page, "script-src 'self'", "worker-src 'self' blob:")
