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
# The shape of each parameter, in the order of PARAMETER_NAMES (tests check it against Net()).
PARAMETER_SHAPES: dict[str, tuple[int, ...]] = {
    "conv1.weight": (6, 1, 5, 5),
    "conv1.bias": (6,),
    "conv2.weight": (16, 6, 5, 5),
    "conv2.bias": (16,),
    "fc1.weight": (120, 400),
    "fc1.bias": (120,),
    "fc2.weight": (84, 120),
    "fc2.bias": (84,),
    "fc3.weight": (10, 84),
    "fc3.bias": (10,),
}
