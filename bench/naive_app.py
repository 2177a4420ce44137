"""The naive way to serve LeNet with FastAPI, for comparison: a pydantic body, stdlib JSON, one
forward pass per request, no batching. Run: `uvicorn bench.naive_app:app` (LENET_SEED seeds it;
LENET_DEVICE, cpu by default, is where it computes).
"""

import os
from typing import Any

import torch
from fastapi import FastAPI
from pydantic import BaseModel

from models.lenet import build_net

torch.set_grad_enabled(False)
device = torch.device(os.environ.get("LENET_DEVICE", "cpu"))
model = build_net(int(os.environ.get("LENET_SEED", "0"))).to(device).eval()
app = FastAPI(title="naive LeNet")


class PredictRequest(BaseModel):
    """One image [32][32], N images [N][32][32] or [N][1][32][32]."""

    inputs: list[Any]


@app.post("/predict")
def predict(request: PredictRequest) -> dict[str, Any]:
    """Logits, argmax and softmax, as in a first tutorial."""
    images = torch.tensor(request.inputs, dtype=torch.float32)
    images = images.reshape(-1, 1, 32, 32).to(device)
    logits = model(images).cpu()
    return {
        "outputs": logits.tolist(),
        "predictions": logits.argmax(1).tolist(),
        "probabilities": torch.softmax(logits, 1).tolist(),
    }
