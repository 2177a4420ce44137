"""Property-based fuzzing of every documented operation with Schemathesis, in-process (ASGI).

The schema is the app's own `/openapi.json`, so what is documented is what is fuzzed: valid and
invalid bodies, parameters and headers from the components schemas. The default checks run,
`not_a_server_error` included, less the two turned off below with their reasons; the examples are
few and derandomized, so a run is repeatable and bounded in time. Schemathesis stops and restarts
the app's lifespan around each operation, which also proves the engine survives a restart.
"""

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.python import asgi

from app.main import create_app
from app.settings import Settings
from tests.conftest import SEED, TEST_DEVICE

MAX_EXAMPLES = 10
# Off, with the reason: the routes document their 200 answers but not their deliberate 4xx
# ones (400, 401, 404, 413, 415, 422), which the contract fixes in API.md; every generated
# request the server refuses would otherwise count as "undocumented status". A 5xx still fails
# through `not_a_server_error`, and the bodies of documented answers are still checked.
#
# Off, with the reason: JSON Schema cannot state the body rules the server rightly enforces
# (rectangular arrays, base64 whose length matches its shape, as many targets as images, values
# finite once in float32, exactly one of inputs and tensor), so "schema-valid" bodies that break
# them are refused with 422 by design; tests/test_semantics.py pins each of those rules.
EXCLUDED_CHECKS = [
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.positive_data_acceptance,
]


# Built at import, as Schemathesis needs the schema to collect one test per operation; nothing
# runs until the first request starts the app's lifespan.
_CHECKPOINTS = Path(tempfile.mkdtemp(prefix="lenet-schemathesis-"))
app = create_app(
    Settings(
        device=TEST_DEVICE,
        seed=SEED,
        checkpoint_dir=_CHECKPOINTS,
        autosave_on_shutdown=False,
        # Small limits keep generated batches cheap; they are limits like any other.
        max_batch_size=8,
        max_image_side=64,
        max_body_bytes=1024 * 1024,
    )
)


def _documented_answers(openapi: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for operations in openapi["paths"].values():
        for operation in operations.values():
            for answer in operation.get("responses", {}).values():
                yield from answer.get("content", {}).values()


def test_json_answers_are_documented_as_their_models() -> None:
    # FastAPI documents a response_class that is not a JSONResponse as {"type": "string"} and
    # merges that into `responses={200: {"model": ...}}`: a schema no object answer satisfies.
    broken = [
        media["schema"]
        for media in _documented_answers(app.openapi())
        if "$ref" in media.get("schema", {}) and "type" in media["schema"]
    ]
    assert not broken


schema = schemathesis.openapi.from_dict(app.openapi())
schema.app = app  # calls go to the app in-process, through its ASGI interface


@pytest.fixture(scope="module", autouse=True)
def _stop_the_app() -> Iterator[None]:
    """Stop the app's lifespan (and the engine's thread) after the module, then clean up."""
    yield
    asgi.shutdown_lifespans()
    shutil.rmtree(_CHECKPOINTS, ignore_errors=True)


def test_the_fuzzed_schema_is_the_served_one() -> None:
    # A twin app, so that this test leaves the fuzzed app's lifespan to Schemathesis.
    twin = create_app(app.state.settings)
    with TestClient(twin) as client:
        assert client.get("/openapi.json").json() == app.openapi()


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_every_operation_honours_its_schema(case: Any) -> None:
    case.call_and_validate(excluded_checks=EXCLUDED_CHECKS)
