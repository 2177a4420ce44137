"""app.main: the factory's lifespan."""

import gc
from collections.abc import Callable

from fastapi.testclient import TestClient


def test_the_lifespan_freezes_start_up_objects_out_of_the_collectors_sight(
    make_client: Callable[..., TestClient],
) -> None:
    gc.unfreeze()
    make_client(gc_freeze=False)
    assert gc.get_freeze_count() == 0
    try:
        make_client(gc_freeze=True)
        # The model, torch and the framework: hundreds of thousands of objects that a full
        # collection no longer walks while requests wait.
        assert gc.get_freeze_count() > 100_000
    finally:
        gc.unfreeze()
