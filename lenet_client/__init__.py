"""The lenet-serve client: a typed HTTP client (no torch), data sets and `lenet train`.

`pip install lenet-serve` brings the client; `pip install 'lenet-serve[train]'` adds what
`lenet train` needs on top (scikit-learn for its digits, tqdm for progress bars).
"""

from lenet_client.client import (
    AsyncLenetClient,
    LenetClient,
    LenetConnectionError,
    LenetError,
    LenetHTTPError,
)

__all__ = [
    "AsyncLenetClient",
    "LenetClient",
    "LenetConnectionError",
    "LenetError",
    "LenetHTTPError",
]
