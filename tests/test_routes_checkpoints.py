"""app.routes.checkpoints: POST /checkpoints, restore, and what the lifespan does with them
(load the newest at start-up, save on shutdown only after a change).
"""

from collections.abc import Callable

from fastapi.testclient import TestClient

from tests.conftest import (
    local_net,
    same_weights,
    served_weights,
    train,
    version_step,
)

ClientFactory = Callable[..., TestClient]


def test_restore_is_a_new_version_with_the_checkpoint_step_and_optimizer_state(
    client: TestClient,
) -> None:
    assert client.put("/optimizer", json={"name": "sgd", "lr": 0.05, "momentum": 0.9}).is_success
    train(client, seed=1)
    train(client, seed=2)
    checkpoint = client.post("/checkpoints").json()
    assert (checkpoint["version"], checkpoint["step"]) == (2, 2)
    after_third = train(client, seed=3)
    expected = served_weights(client)
    train(client, seed=4)
    restored = client.post(f"/checkpoints/{checkpoint['id']}/restore")
    assert restored.status_code == 200
    assert restored.json() == {"version": 5, "step": 2}
    # The momentum buffer came back too: the same third step lands on the same weights.
    again = train(client, seed=3)
    assert again["step"] == after_third["step"] == 3 and again["version"] == 6
    assert same_weights(served_weights(client), expected)
    assert client.post("/checkpoints/no-such-id/restore").status_code == 404


def test_restart_continues_from_the_checkpoint_which_wins_over_the_seed(
    make_client: ClientFactory,
) -> None:
    first = make_client(seed=0)
    for seed in (1, 2, 3):
        train(first, seed=seed)
    assert first.post("/checkpoints").status_code == 201
    trained = served_weights(first)
    first.__exit__(None, None, None)
    second = make_client(seed=5)
    assert version_step(second) == (3, 3)
    assert same_weights(served_weights(second), trained)
    assert (train(second)["version"], version_step(second)) == (4, (4, 4))


def test_shutdown_without_a_step_writes_no_checkpoint(make_client: ClientFactory) -> None:
    idle = make_client(autosave_on_shutdown=True)
    idle.__exit__(None, None, None)
    # Nothing was trained, so nothing may pin the seed's weights for the next start.
    reseeded = make_client(seed=5, autosave_on_shutdown=True)
    assert reseeded.get("/checkpoints").json() == {"checkpoints": []}
    expected = {n: p.detach().numpy() for n, p in local_net(5).named_parameters()}
    assert same_weights(served_weights(reseeded), expected)
    train(reseeded)
    reseeded.__exit__(None, None, None)
    after = make_client()
    assert version_step(after) == (1, 1)
