"""The network's shapes and names as plain Python, importable without torch.

`models.lenet` re-exports these; the client (`lenet_client`), which must not need torch, reads
them from here.
"""

INPUT_SHAPE = (1, 32, 32)  # (channels, height, width) of one image
IMAGE_SIDE = INPUT_SHAPE[-1]
NUM_CLASSES = 10
PARAMETER_NAMES = (
    "conv1.weight",
    "conv1.bias",
    "conv2.weight",
    "conv2.bias",
    "fc1.weight",
    "fc1.bias",
    "fc2.weight",
    "fc2.bias",
    "fc3.weight",
    "fc3.bias",
)
LAYER_NAMES = ("conv1", "conv2", "fc1", "fc2", "fc3")
