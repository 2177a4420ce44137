"""Hostile clients: cross-site requests (Origin), DNS rebinding (Host), oversized headers,
HEAD on every GET route and the page's security headers; in process and on the real server."""

import importlib
import json
import pkgutil
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import ValidationError

import app.routes
from app.http import require_token
from app.settings import Settings
from tests.conftest import TEST_DEVICE, image_batch, training_state
from tests.server import LiveServer, read_http_response, start_test_server

TOKEN = "s3cret-token-0123456789"
BEARER = {"authorization": f"Bearer {TOKEN}"}
FOREIGN_ORIGINS = [
    "https://evil.example",
    "null",
    "http://testserver:8080",  # the same host on another port is another origin
    "https://testserver",  # and so is another scheme
    "not an origin",
]
TRAIN = {"inputs": image_batch(1)[0, 0].tolist(), "targets": [3]}


def guarded_routes() -> list[tuple[str, str]]:
    """(method, path) of every route that depends on `require_token`, in every router of
    app.routes: the routes that change anything, the tutorial's cells included."""
    found = []
    for info in pkgutil.iter_modules(app.routes.__path__):
        router = getattr(importlib.import_module(f"app.routes.{info.name}"), "router", None)
        for route in getattr(router, "routes", []):
            if isinstance(route, APIRoute) and any(
                dependency.call is require_token for dependency in route.dependant.dependencies
            ):
                found.extend((method, route.path) for method in sorted(route.methods))
    return sorted(found)


GUARDED = guarded_routes()


def test_the_guarded_routes_are_found() -> None:
    assert ("POST", "/reset") in GUARDED and ("POST", "/checkpoints") in GUARDED
    assert ("PUT", "/params/import") in GUARDED and len(GUARDED) >= 7


@pytest.fixture
def trained(make_client: Callable[..., TestClient]) -> Callable[..., tuple[TestClient, str]]:
    """A client on a service (settings as given) with one step taken and a checkpoint."""

    def factory(**settings: Any) -> tuple[TestClient, str]:
        client = make_client(**settings)
        assert client.post("/train-step", json=TRAIN, headers=BEARER).status_code == 200
        saved = client.post("/checkpoints", headers=BEARER)
        assert saved.status_code == 201, saved.text
        return client, saved.json()["id"]

    return factory


def _fill(path: str, checkpoint_id: str) -> str:
    return re.sub(r"\{[^}]+\}", checkpoint_id, path)


@pytest.mark.parametrize("token", [None, TOKEN])
@pytest.mark.parametrize("origin", FOREIGN_ORIGINS)
def test_a_cross_site_request_to_a_guarded_route_is_403_and_changes_nothing(
    trained: Callable[..., tuple[TestClient, str]], origin: str, token: str | None
) -> None:
    client, checkpoint_id = trained(api_token=token)
    before = training_state(client)
    for method, path in GUARDED:
        # What a page of another site can send without a preflight: an empty or text/plain body.
        for content, content_type in ((b"", {}), (b"{}", {"content-type": "text/plain"})):
            headers = {**content_type, "origin": origin, **BEARER}
            response = client.request(
                method, _fill(path, checkpoint_id), content=content, headers=headers
            )
            assert response.status_code == 403, (method, path, response.text)
            detail = response.json()["detail"]
            assert "LENET_CORS_ORIGINS" in detail and "cross-site" in detail
    assert training_state(client) == before


def test_the_origin_is_checked_before_the_token(
    trained: Callable[..., tuple[TestClient, str]],
) -> None:
    client, _ = trained(api_token=TOKEN)
    assert client.post("/reset", headers={"origin": "https://evil.example"}).status_code == 403
    assert client.post("/reset").status_code == 401


@pytest.mark.parametrize(
    "headers",
    [
        {},  # not a browser
        {"origin": "http://testserver"},  # the page itself
        {"origin": "HTTP://TestServer:80"},  # the same origin, written otherwise
        {"origin": "https://app.example:8443"},  # listed in LENET_CORS_ORIGINS
    ],
)
def test_same_origin_listed_and_originless_requests_pass(
    make_client: Callable[..., TestClient], headers: dict[str, str]
) -> None:
    client = make_client(cors_origins="https://app.example:8443,http://other.example")
    before = client.get("/model").json()["version"]
    response = client.post("/reset", headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["version"] > before


def test_two_origin_headers_are_refused(make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    headers = [("origin", "http://testserver"), ("origin", "https://evil.example")]
    assert client.post("/reset", headers=headers).status_code == 403


def test_reading_routes_ignore_the_origin(client: TestClient) -> None:
    assert client.get("/model", headers={"origin": "https://evil.example"}).status_code == 200
    response = client.post("/predict", json=TRAIN, headers={"origin": "null"})
    assert response.status_code == 422  # a read: no origin check (targets is an unknown field)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("localhost, 127.0.0.1,[::1]", ("localhost", "127.0.0.1", "[::1]")),
        ("API.Example", ("api.example",)),
        ("*", ("*",)),
        ("", None),
    ],
)
def test_allowed_hosts_are_comma_separated(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: tuple[str, ...] | None
) -> None:
    monkeypatch.setenv("LENET_ALLOWED_HOSTS", value)
    assert Settings(_env_file=None).allowed_hosts == expected


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("allowed_hosts", "localhost:8000"),
        ("allowed_hosts", "http://localhost"),
        ("allowed_hosts", "*,localhost"),
        ("allowed_hosts", "a b"),
        ("allowed_hosts", "[not-ipv6]"),
        ("cors_origins", "*"),
        ("cors_origins", "null"),
        ("cors_origins", "https://app.example/"),
        ("cors_origins", "app.example"),
        ("cors_origins", "ftp://app.example"),
        ("cors_origins", "https://user@app.example"),
        ("body_timeout_s", "0"),
        ("body_timeout_s", "inf"),
        ("header_timeout_s", "-1"),
    ],
)
def test_unsafe_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(f"LENET_{name.upper()}", value)
    with pytest.raises(ValidationError, match=name):
        Settings(_env_file=None)


def test_cors_origins_are_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LENET_CORS_ORIGINS", "HTTPS://App.Example:443, http://[::1]:8000")
    assert Settings(_env_file=None).cors_origins == ("https://app.example", "http://[::1]:8000")


def test_listed_hosts_are_served_and_others_are_400(make_client: Callable[..., TestClient]) -> None:
    client = make_client(allowed_hosts="api.example,[::1]")
    for host in ("api.example", "API.example:8000", "[::1]:80"):
        assert client.get("/healthz", headers={"host": host}).status_code == 200, host
    for path in ("/healthz", "/v2/health/live"):
        response = client.get(path, headers={"host": "evil.example"})
        assert response.status_code == 400
        message = response.json().get("detail") or response.json()["error"]
        assert "evil.example" in message and "LENET_ALLOWED_HOSTS" in message


def test_off_loopback_any_host_is_served_by_default(client: TestClient) -> None:
    # TestClient's server is "testserver", not a loopback address (as in a container).
    assert client.get("/healthz", headers={"host": "anything.example"}).status_code == 200


def test_a_huge_inference_header_length_is_400_not_500(client: TestClient) -> None:
    body = json.dumps(
        {"inputs": [{"name": "input", "shape": [1, 1, 32, 32], "datatype": "FP32",
                     "data": [0.0] * 1024}]}
    ).encode()  # fmt: skip
    errors = []
    for value in ("9" * 5000, "0" * 4999 + "1"):  # the second: a JSON part of one byte, "{"
        response = client.post(
            "/v2/models/lenet/infer",
            content=body,
            headers={"content-type": "application/json", "inference-header-content-length": value},
        )
        assert response.status_code == 400, response.text
        assert len(response.text) < 500  # the 5,000 digits are not echoed
        errors.append(response.json()["error"])
    assert "Inference-Header-Content-Length is 5000 digits long" in errors[0]


def _get_paths(schema: dict[str, Any]) -> list[str]:
    values = {"model_name": "lenet", "model_version": "1"}
    return [
        re.sub(r"\{([^}]+)\}", lambda match: values[match.group(1)], path)
        for path, operations in schema["paths"].items()
        if "get" in operations
    ]


# Headers that may differ between two answers of the same route.
_VOLATILE = {"date", "content-length", "x-request-id"}


def test_head_answers_like_get_on_every_get_route(client: TestClient) -> None:
    paths = [*_get_paths(client.get("/openapi.json").json()), "/", "/static/app.js", "/nowhere"]
    assert "/healthz" in paths and "/v2/models/lenet/versions/1" in paths
    for path in paths:
        get = client.get(path)
        head = client.head(path)
        assert head.status_code == get.status_code, path
        assert head.content == b"", path
        same = {k: v for k, v in get.headers.items() if k not in _VOLATILE}
        assert {k: v for k, v in head.headers.items() if k not in _VOLATILE} == same, path
        if path != "/metrics":  # the only body that changes from one request to the next
            assert head.headers.get("content-length") == get.headers.get("content-length"), path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One real server with the default guards (loopback: the loopback names only)."""
    root: Path = tmp_path_factory.mktemp("guards")
    live = start_test_server(root, device=TEST_DEVICE, log_level="warning")
    yield live
    live.stop()


def _raw(server: LiveServer, head: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    with server.connect(timeout=10) as sock:
        sock.sendall(head.encode("latin-1") + body)
        return read_http_response(sock)


@pytest.mark.server
def test_on_loopback_only_the_loopback_names_are_served(server: LiveServer) -> None:
    port = server.url.rsplit(":", 1)[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "[::1]", "LOCALHOST"):
        status, _, body = _raw(server, f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n")
        assert status == 200, (host, body)
    # A page of evil.example whose name now resolves to 127.0.0.1 sends its own name.
    for host in (f"evil.example:{port}", "localhost.evil.example", "127.0.0.2"):
        status, headers, body = _raw(
            server, f"POST /reset HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n"
        )
        assert status == 400, (host, body)
        assert "LENET_ALLOWED_HOSTS" in json.loads(body)["detail"]
        assert headers["content-type"] == "application/json"
    status, _, body = _raw(server, "GET /healthz HTTP/1.0\r\n\r\n")  # no Host at all
    assert status == 400, body


@pytest.mark.server
def test_cross_site_posts_are_403_on_the_real_server(server: LiveServer) -> None:
    with server.client() as http:
        before = http.get("/model").json()["version"]
        for headers in (
            {"origin": "https://evil.example"},
            {"origin": "null", "content-type": "text/plain"},
        ):
            assert http.post("/reset", headers=headers).status_code == 403
            assert http.post("/checkpoints", content=b"x", headers=headers).status_code == 403
        assert http.get("/checkpoints").json()["checkpoints"] == []
        assert http.get("/model").json()["version"] == before
        same_site = http.post("/reset", headers={"origin": server.url})
        assert same_site.status_code == 200, same_site.text


@pytest.mark.server
def test_headers_over_64_kib_are_431(server: LiveServer) -> None:
    filler = "".join(f"X-Filler-{i}: {'a' * 1000}\r\n" for i in range(100))  # about 100 KB
    status, headers, body = _raw(
        server, f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n{filler}\r\n"
    )
    assert status == 431, body
    assert "65536" in json.loads(body)["detail"]
    assert headers.get("connection") == "close"
    one = f"X-Big: {'b' * 100_000}\r\n"  # one header alone
    assert _raw(server, f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n{one}\r\n")[0] == 431
    filler = "".join(f"X-Filler-{i}: {'a' * 1000}\r\n" for i in range(60))  # about 61 KB: fine
    assert _raw(server, f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n{filler}\r\n")[0] == 200


@pytest.mark.server
def test_head_on_the_real_server_sends_headers_only(server: LiveServer) -> None:
    with server.client() as http:
        for path in ("/", "/static/app.js", "/healthz", "/params/export", "/metrics", "/model"):
            get = http.get(path)
            head = http.head(path)  # the same keep-alive connection: no stray body bytes
            assert (head.status_code, head.content) == (get.status_code, b""), path
            assert head.headers["content-type"] == get.headers["content-type"], path
        assert http.get("/healthz").status_code == 200
        metrics = http.get("/metrics").text
    assert 'method="HEAD",route="/healthz",status="200"' in metrics
    assert "Traceback" not in server.log() and "Response content" not in server.log()


@pytest.mark.server
def test_the_page_has_its_security_headers(server: LiveServer) -> None:
    with server.client() as http:
        for path in ("/", "/static/app.js", "/static/style.css"):
            response = http.get(path)
            assert response.status_code == 200, path
            csp = response.headers["content-security-policy"]
            assert "default-src 'self'" in csp and "img-src 'self' data:" in csp, path
            assert response.headers["x-frame-options"] == "DENY", path
            assert response.headers["x-content-type-options"] == "nosniff", path
        for path in ("/healthz", "/nowhere", "/v2/models/nothing"):
            response = http.get(path)
            assert response.headers["x-content-type-options"] == "nosniff", path
            assert "content-security-policy" not in response.headers, path
        refused = http.post("/predict", content=b"{", headers={"content-type": "application/json"})
        assert refused.headers["x-content-type-options"] == "nosniff"


def test_the_page_needs_nothing_the_policy_forbids() -> None:
    # default-src 'self': no inline script or style, no script from elsewhere; data: images only.
    static = Path(app.routes.__file__).parents[1] / "static"
    page = (static / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", page), "inline script"
    assert "<style" not in page and " style=" not in page and not re.search(r" on\w+=", page)
    assert not re.search(r"(src|href)=\"(https?:)?//", page), "a resource from elsewhere"
    for script in static.glob("*.js"):
        text = script.read_text()
        assert "eval(" not in text and "new Function" not in text, script.name
        assert not re.search(r"fetch\(\s*[\"'`]https?://", text), script.name
