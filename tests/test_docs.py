"""/docs and /redoc: offline (assets from the package), their own CSP, and the bearer scheme.

The browser tests load both pages in Debian's Chromium with every request that is not to the
server aborted, as on a machine without a network.
"""

import base64
import hashlib
import re
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient

from app.http import require_token
from tests.conftest import SEED, TEST_DEVICE
from tests.server import LiveServer, start_test_server
from tests.test_web import CHROMIUM, CHROMIUM_ARGS, WAIT_MS

TOKEN = "docs-test-token"


def _needs_token(dependant: Dependant) -> bool:
    return any(dep.call is require_token or _needs_token(dep) for dep in dependant.dependencies)


def test_a_service_with_a_token_requires_the_bearer_scheme(
    make_client: Callable[..., TestClient],
) -> None:
    schema = make_client(api_token="secret-token-1").get("/openapi.json").json()
    securities = [
        operation["security"]
        for operations in schema["paths"].values()
        for operation in operations.values()
        if "security" in operation
    ]
    assert securities and all(security == [{"bearer": []}] for security in securities)


def test_the_bearer_scheme_is_on_exactly_the_routes_that_need_the_token(
    client: TestClient,
) -> None:
    schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "LENET_API_TOKEN, when the service has one; reading never needs it.",
    }
    secured = {
        (method.upper(), path)
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        # Without LENET_API_TOKEN (as here) the token is optional: bearer, or nothing.
        if operation.get("security") == [{"bearer": []}, {}]
    }
    # Each route as the app serves it, with the dependencies of the routers that include it.
    needing = {
        (method, route.path_format)
        for route in iter_route_contexts(client.app.routes)  # type: ignore[attr-defined]
        if isinstance(route.original_route, APIRoute) and _needs_token(route.dependant)
        for method in route.methods
    }
    assert secured == needing
    # The contract's list, as a check that the walk above finds what it should.
    for operation in [
        ("POST", "/train-step"),
        ("POST", "/loss"),
        ("PUT", "/optimizer"),
        ("POST", "/reset"),
        ("POST", "/checkpoints"),
        ("POST", "/checkpoints/{checkpoint_id}/restore"),
        ("PUT", "/params/import"),
        ("POST", "/zero-grad"),
        ("POST", "/backward"),
        ("POST", "/step"),
    ]:
        assert operation in secured
    assert not {("POST", "/predict"), ("GET", "/params"), ("GET", "/optimizer")} & secured


def test_the_token_still_decides_with_the_scheme_declared(
    make_client: Any,
) -> None:
    client = make_client(api_token=TOKEN)
    assert client.post("/zero-grad").status_code == 401
    assert (
        client.post("/zero-grad", headers={"Authorization": "Bearer wrong-token"}).status_code
        == 401
    )
    assert client.post("/zero-grad", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    assert (
        client.post("/zero-grad", headers={"Authorization": f"bearer  {TOKEN} "}).status_code == 200
    )


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_pages_use_only_assets_the_server_serves(client: TestClient, path: str) -> None:
    page = client.get(path)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    html = page.text
    urls = re.findall(r"""(?:src|href|spec-url)=["']([^"']+)["']""", html)
    urls += re.findall(r"""url: ?["']([^"']+)["']""", html)
    assert urls
    for url in urls:
        assert not urlsplit(url).netloc, f"{path} loads {url} from elsewhere"
        assert client.get(url).status_code == 200, url
    assert "http://" not in html and "https://" not in html
    assert client.head(path).status_code == 200


def test_each_page_has_its_own_policy(client: TestClient) -> None:
    swagger = client.get("/docs")
    policy = swagger.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "'unsafe-inline'" not in directives["script-src"]
    # Swagger UI's start-up script is the page's one inline script, allowed by its hash.
    (inline,) = re.findall(r"<script>(.*?)</script>", swagger.text, re.DOTALL)
    digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
    assert directives["script-src"] == f"'self' 'sha256-{digest}'"
    redoc = dict(
        d.strip().split(" ", 1)
        for d in client.get("/redoc").headers["content-security-policy"].split(";")
    )
    assert redoc["script-src"] == "'self'"
    assert redoc["worker-src"] == "'self' blob:"


def test_docs_are_not_in_the_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "/docs" not in paths and "/redoc" not in paths


# ---------------------------------------------------------------------------------- browser

MARKS = (
    pytest.mark.browser,
    pytest.mark.server,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs Debian's Chromium at /usr/bin/chromium"
    ),
)


def browser_test(test: Any) -> Any:
    """Marks a test that drives Chromium against the real server."""
    for mark in MARKS:
        test = mark(test)
    return test


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_test_server(
        tmp_path_factory.mktemp("docs"), seed=SEED, device=TEST_DEVICE, api_token=TOKEN
    )
    yield live
    live.stop()


class Offline:
    """A Chromium tab that can reach the server only; what else it tried, and what it logged."""

    def __init__(self, browser: Any, server: LiveServer) -> None:
        self.context = browser.new_context(viewport={"width": 1200, "height": 900})
        self.tab = self.context.new_page()
        self.aborted: list[str] = []
        self.errors: list[str] = []
        origin = server.url

        def route(request_route: Any) -> None:
            url = request_route.request.url
            if url.startswith(origin + "/"):
                request_route.continue_()
            else:
                self.aborted.append(url)
                request_route.abort()

        self.tab.route("**/*", route)
        self.tab.on("pageerror", lambda error: self.errors.append(str(error)))
        self.tab.on(
            "console",
            lambda message: self.errors.append(message.text) if message.type == "error" else None,
        )


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), chromium_sandbox=False, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@pytest.fixture
def offline(browser: Any, server: LiveServer) -> Iterator[Offline]:
    tab = Offline(browser, server)
    yield tab
    tab.context.close()


@browser_test
def test_swagger_ui_works_offline_and_authorize_sends_the_token(
    offline: Offline, server: LiveServer
) -> None:
    tab = offline.tab
    tab.goto(server.url + "/docs")
    tab.wait_for_selector("text=/train-step", timeout=WAIT_MS)
    assert tab.locator(".opblock").count() > 20  # every operation is listed
    authorize = tab.locator("button.authorize")
    assert authorize.count() == 1
    # Authorize with the token, then run POST /zero-grad from the page: 200, not 401.
    authorize.click()
    tab.fill(".modal-ux input", TOKEN)
    tab.click(".modal-ux button.authorize")
    tab.click(".modal-ux button.btn-done")
    with server.client() as client:
        operation = client.get("/openapi.json").json()["paths"]["/zero-grad"]["post"]
    block = tab.locator(f"#operations-{operation['tags'][0]}-{operation['operationId']}")
    block.locator(".opblock-summary").click()
    block.locator("button.try-out__btn").click()
    block.locator("button.execute").click()
    status = block.locator(".live-responses-table tbody .response-col_status").first
    status.wait_for(timeout=WAIT_MS)
    assert status.inner_text().strip() == "200"
    assert offline.aborted == []
    assert offline.errors == []


@browser_test
def test_redoc_renders_offline(offline: Offline, server: LiveServer) -> None:
    tab = offline.tab
    tab.goto(server.url + "/redoc")
    tab.wait_for_selector("h1:has-text('lenet-serve')", timeout=WAIT_MS)
    tab.wait_for_selector("text=/train-step", state="attached", timeout=WAIT_MS)
    assert tab.locator("h2").count() > 10  # a heading per operation
    assert offline.aborted == []
    # ReDoc's menu footer shows Redocly's logo from their CDN; the policy keeps it out, and
    # that is the one complaint allowed.
    logo = "Loading the image 'https://cdn.redoc.ly/redoc/logo-mini.svg' violates"
    assert [error for error in offline.errors if not error.startswith(logo)] == []
