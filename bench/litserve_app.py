"""LeNet on LitServe with dynamic batching, for comparison (runs in .venv-bench).

Usage: `python bench/litserve_app.py PORT`. The same network and seed as lenet-serve, the same
request body (`{"inputs": [[...32x32...]]}`, one image) and the same answer fields, on the
device LENET_DEVICE names (cpu by default; cuda for LitServe's CUDA accelerator, one GPU).
"""

import os
import sys
from pathlib import Path
from typing import Any

import litserve as ls
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models.lenet import build_net  # noqa: E402

MAX_BATCH_SIZE = 32
BATCH_TIMEOUT_S = 0.005


class LeNetAPI(ls.LitAPI):
    """decode -> batch -> predict -> unbatch -> encode, LitServe's hooks."""

    def setup(self, device: str) -> None:
        """Build the seeded LeNet on `device`."""
        torch.set_grad_enabled(False)
        self.device = device
        self.model = build_net(int(os.environ.get("LENET_SEED", "0"))).to(device).eval()

    def decode_request(self, request: dict[str, Any]) -> torch.Tensor:
        """One image (32, 32) or (1, 32, 32) -> (1, 32, 32)."""
        return torch.tensor(request["inputs"], dtype=torch.float32).reshape(1, 32, 32)

    def batch(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """Stack the gathered images into (N, 1, 32, 32)."""
        return torch.stack(inputs).to(self.device)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, 10)."""
        return self.model(x)

    def unbatch(self, output: torch.Tensor) -> list[torch.Tensor]:
        """One row of logits per request."""
        return list(output.cpu())

    def encode_response(self, output: torch.Tensor) -> dict[str, Any]:
        """The fields lenet-serve answers (for one image)."""
        return {
            "outputs": [output.tolist()],
            "predictions": [int(output.argmax())],
            "probabilities": [torch.softmax(output, 0).tolist()],
        }


def main() -> None:
    """Serve on 127.0.0.1:PORT with one inference worker, batching as configured above."""
    port = int(sys.argv[1])
    api = LeNetAPI(max_batch_size=MAX_BATCH_SIZE, batch_timeout=BATCH_TIMEOUT_S)
    accelerator = "cuda" if os.environ.get("LENET_DEVICE", "cpu").startswith("cuda") else "cpu"
    server = ls.LitServer(api, accelerator=accelerator, devices=1, workers_per_device=1)
    server.run(host="127.0.0.1", port=port, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
