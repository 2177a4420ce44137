"""GET /metrics: Prometheus text that moves with requests, batches and training."""

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.metrics import OTHER_METHOD, UNROUTED
from tests.conftest import image_batch

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: TestClient) -> Samples:
    """Every sample of GET /metrics, by name and sorted labels."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def requests_of(samples: Samples, method: str, route: str, status: int) -> float:
    return value(
        samples, "lenet_http_requests_total", method=method, route=route, status=str(status)
    )


def test_requests_are_counted_by_route_template(client: TestClient) -> None:
    before = scrape(client)
    images = image_batch(3).tolist()
    for _ in range(2):
        assert client.post("/predict", json={"inputs": images}).status_code == 200
    assert client.get("/v2/models/lenet").status_code == 200
    assert client.get("/v2/models/other").status_code == 404
    assert client.get("/no/such/page").status_code == 404
    assert client.request("BREW", "/predict").status_code == 405
    after = scrape(client)

    def moved(method: str, route: str, status: int) -> float:
        return requests_of(after, method, route, status) - requests_of(
            before, method, route, status
        )

    assert moved("POST", "/predict", 200) == 2
    # The template, not the raw path: one series for every model name.
    assert moved("GET", "/v2/models/{model_name}", 200) == 1
    assert moved("GET", "/v2/models/{model_name}", 404) == 1
    assert moved("GET", UNROUTED, 404) == 1
    assert moved(OTHER_METHOD, "/predict", 405) == 1  # methods are a bounded label too
    assert not any("/v2/models/other" in str(key) or "/no/such" in str(key) for key in after)
    latency_count = value(
        after, "lenet_http_request_duration_seconds_count", method="POST", route="/predict"
    ) - value(before, "lenet_http_request_duration_seconds_count", method="POST", route="/predict")
    assert latency_count == 2
    assert value(
        after, "lenet_http_request_duration_seconds_sum", method="POST", route="/predict"
    ) > value(before, "lenet_http_request_duration_seconds_sum", method="POST", route="/predict")
    # The scrape itself is counted too, under its own route.
    assert requests_of(after, "GET", "/metrics", 200) >= 1


def test_batches_and_queue_waits(client: TestClient) -> None:
    before = scrape(client)
    for n in (3, 5):
        assert client.post("/predict", json={"inputs": image_batch(n).tolist()}).status_code == 200
    after = scrape(client)
    for name, moved in (
        ("lenet_batch_images_sum", 8),
        ("lenet_batch_images_count", 2),
        ("lenet_batch_queue_wait_seconds_count", 2),
    ):
        assert value(after, name) - value(before, name) == moved, name
    assert (
        value(after, "lenet_batch_images_bucket", le="4.0")
        - value(before, "lenet_batch_images_bucket", le="4.0")
        == 1
    )
    assert value(after, "lenet_batch_queue_wait_seconds_sum") >= value(
        before, "lenet_batch_queue_wait_seconds_sum"
    )


def test_training_metrics_read_the_engine(client: TestClient) -> None:
    before = scrape(client)
    assert value(before, "lenet_model_version") == 0
    assert value(before, "lenet_model_step") == 0
    assert ("lenet_train_last_loss", ()) not in before  # no step taken yet
    assert value(before, "lenet_model_ready") == 1
    images = image_batch(4).tolist()
    step = client.post("/train-step", json={"inputs": images, "targets": [1, 2, 3, 4]})
    assert step.status_code == 200, step.text
    # Targets this large overflow the squared error: the step is refused and counted.
    refused = client.post(
        "/train-step",
        json={"inputs": image_batch(1).tolist(), "targets": [3e38] * 10, "loss": "mse"},
    )
    assert refused.status_code == 422, refused.text
    after = scrape(client)
    assert value(after, "lenet_model_version") == step.json()["version"] == 1
    assert value(after, "lenet_model_step") == step.json()["step"] == 1
    assert value(after, "lenet_train_last_loss") == pytest.approx(step.json()["loss"])
    assert value(after, "lenet_train_steps_refused_total") == 1


def test_each_app_has_its_own_registry(make_client: Callable[..., TestClient]) -> None:
    first, second = make_client(), make_client()
    assert first.post("/predict", json={"inputs": image_batch(1).tolist()}).status_code == 200
    assert requests_of(scrape(first), "POST", "/predict", 200) == 1
    assert requests_of(scrape(second), "POST", "/predict", 200) == 0
    assert value(scrape(second), "lenet_batch_images_count") == 0


def test_refusals_before_routing_are_counted(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_body_bytes=1024)
    response = client.post("/predict", json={"inputs": image_batch(1).tolist()})
    assert response.status_code == 413
    assert requests_of(scrape(client), "POST", UNROUTED, 413) == 1
