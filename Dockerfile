# syntax=docker/dockerfile:1
# lenet-serve image: `docker compose up` (see docker-compose.yml), or
#   docker build -t lenet-serve:cpu .                                   # CPU-only torch (default)
#   docker build -t lenet-serve:cu128 --build-arg TORCH_VARIANT=cu128 .  # CUDA 12.8 torch
# A CUDA image runs on the GPU when the container is given one (`--gpus all`, or
# docker-compose.gpu.yml) and on the CPU otherwise: LENET_DEVICE=auto picks CUDA only when torch
# can see a device.

# The base is an argument so that offline builds (scripts/podman_smoke.sh) can use a local one.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder

# Which build of the torch release pinned in pyproject.toml (the driver each needs is NVIDIA's
# "CUDA Toolkit and Corresponding Driver Versions" table; older drivers of the same CUDA major
# run it through CUDA minor version compatibility, >= 525 for CUDA 12.x, none below 580 for 13.x):
# cpu (default): PyTorch's CPU wheel index (a ~180 MB wheel; the whole image is ~1.4 GB).
# cu126: CUDA 12.6 (its toolkit driver >= 560.28.03; runs on R525+, e.g. the R535 LTS branch).
# cu128: CUDA 12.8 (>= 570.26; runs on R525+); the first CUDA 12 build for Blackwell GPUs.
# cu130 (also `cuda`, its old name): PyPI's own wheel, CUDA 13.0, driver >= 580.65.06 (R580+).
# The CUDA builds pull in NVIDIA's runtime wheels (several GB) from the same index.
ARG TORCH_VARIANT=cpu
ARG TORCH_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src

# Dependencies first, from the pins in pyproject.toml (the single source of truth), so that
# editing the code does not re-download them. torch goes first, from the variant's index; the
# rest then finds it already satisfied (2.13.0+cpu satisfies ==2.13.0).
COPY pyproject.toml README.md ./
RUN python -c "import re, tomllib; \
deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; \
name = lambda d: re.match(r'[A-Za-z0-9._-]+', d).group(0).lower(); \
open('/tmp/torch.txt', 'w').write(''.join(d + '\n' for d in deps if name(d) == 'torch')); \
open('/tmp/requirements.txt', 'w').write(''.join(d + '\n' for d in deps))" \
 && case "$TORCH_VARIANT" in \
      cpu) pip install --index-url "$TORCH_CPU_INDEX_URL" -r /tmp/torch.txt ;; \
      cu126|cu128) pip install --index-url "$TORCH_INDEX_URL/$TORCH_VARIANT" -r /tmp/torch.txt ;; \
      cu130|cuda) pip install -r /tmp/torch.txt ;; \
      *) echo "TORCH_VARIANT must be cpu, cu126, cu128 or cu130, not '$TORCH_VARIANT'" >&2; exit 2 ;; \
    esac
RUN pip install -r /tmp/requirements.txt

COPY app ./app
COPY models ./models
# The client package is small, pure Python and needs nothing the server lacks; the `train` extra
# (scikit-learn, tqdm) is left out, as it is not in `dependencies`.
COPY lenet_client ./lenet_client
# The build stops here if torch is not the variant asked for (pip found another wheel).
RUN pip install --no-deps . \
 && python -c "import sys, torch; from app.device import torch_variant, variant_matches; \
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'variant', torch_variant()); \
sys.exit(0 if variant_matches(sys.argv[1]) else 'torch is not a ' + sys.argv[1] + ' build')" \
      "$TORCH_VARIANT"


FROM ${PYTHON_IMAGE} AS runtime

# A fixed, unprivileged uid/gid (numeric in USER below, so runAsNonRoot-style checks can verify
# it), so that a bind-mounted checkpoint folder can be chowned to it: chown 10001:10001 DIR.
RUN groupadd --system --gid 10001 lenet \
 && useradd --system --uid 10001 --gid lenet --create-home --home-dir /home/lenet \
      --shell /usr/sbin/nologin lenet \
 && mkdir -p /data/checkpoints \
 && chown -R lenet:lenet /data

COPY --from=builder /opt/venv /opt/venv

# LENET_HOST=0.0.0.0 is needed for the published port to reach the server; compose publishes
# it on the host's 127.0.0.1 only. NVIDIA_DRIVER_CAPABILITIES tells the NVIDIA container runtime
# which driver libraries to inject when the container is given a GPU; it does nothing otherwise.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LENET_HOST=0.0.0.0 \
    LENET_PORT=8000 \
    LENET_DEVICE=auto \
    LENET_CHECKPOINT_DIR=/data/checkpoints \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# Created and owned by lenet above, so a fresh named volume starts writable by the server.
VOLUME ["/data/checkpoints"]
WORKDIR /home/lenet
USER 10001:10001
EXPOSE 8000

# slim has no curl: urllib exits non-zero on a refused connection and on the 503 of a model
# that is still loading.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('LENET_PORT', '8000') + '/readyz', timeout=4)"]

# Exec form: the server is PID 1's direct child under `init: true`, or PID 1 itself, so
# SIGTERM reaches uvicorn, which drains requests and autosaves before exiting.
CMD ["lenet", "serve"]
