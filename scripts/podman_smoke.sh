#!/usr/bin/env bash
# Build the image and run it for real, without a Docker engine or a registry: podman (rootful,
# vfs storage) builds the Dockerfile's CPU variant on a local base image, starts it the way
# docker-compose.yml does, and checks /readyz, the image's HEALTHCHECK, a prediction, an
# authenticated checkpoint in the volume, and a clean stop on SIGTERM.
#
# For machines where docker.io and download.pytorch.org are out of reach but Debian's mirror
# and PyPI are not (the project's dev VMs). Not part of CI: the first run takes ~10 minutes.
#   needs: root, apt-get install podman runc debootstrap; the CPU torch wheel in /opt/wheels
#   usage: sudo scripts/podman_smoke.sh      (WORK=dir keeps the base image and wheels; PORT=n)
set -euo pipefail
cd "$(dirname "$0")/.."

WORK="${WORK:-/tmp/lenet-podman}"
PORT="${PORT:-18080}"
TORCH_WHEEL_DIR="${TORCH_WHEEL_DIR:-/opt/wheels}"
BASE=localhost/python:3.11-slim-local
IMAGE=localhost/lenet-serve:cpu-smoke
NAME=lenet-smoke
TOKEN="smoke-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"

fail() { echo "podman_smoke: $*" >&2; exit 1; }
trap 'echo "podman_smoke: FAILED: $BASH_COMMAND" >&2' ERR
for tool in podman runc debootstrap python3; do
  command -v "$tool" >/dev/null || fail "needs $tool (apt-get install podman runc debootstrap)"
done
[[ $EUID -eq 0 ]] || fail "run as root: rootless podman cannot use this VM's cgroups"

# vfs: no overlay inside a VM disk; runc: crun refuses this VM's hybrid cgroups; explicit
# ulimits: podman's default nofile/nproc exceed what the VM lets a container set.
P=(podman --root "$WORK/storage" --runroot "$WORK/run" --storage-driver vfs --runtime runc)
ULIMITS=(--ulimit nofile=4096:4096 --ulimit nproc=4096:4096)
mkdir -p "$WORK"

# 1. A stand-in for python:3.11-slim: Debian bookworm's own Python 3.11, `python` on PATH.
if ! "${P[@]}" image exists "$BASE"; then
  echo "== base image from Debian bookworm (debootstrap)"
  rootfs="$WORK/rootfs"
  rm -rf "$rootfs"
  # debootstrap does not resolve --include's own dependencies; apt-get -f fixes them after.
  debootstrap --variant=minbase --include=python3.11,python3.11-venv,ca-certificates \
    bookworm "$rootfs" http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1 || true
  cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
  chroot "$rootfs" /bin/sh -ec 'export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get -f install -y -qq >/dev/null
    dpkg --audit && apt-get clean && rm -rf /var/lib/apt/lists/*
    ln -sf /usr/bin/python3.11 /usr/local/bin/python && python -m venv --help >/dev/null'
  : >"$rootfs/etc/resolv.conf"
  tar -C "$rootfs" -c . | "${P[@]}" import --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python"]' - "$BASE" >/dev/null
  rm -rf "$rootfs"
fi

# 2. A local PEP 503 index in place of download.pytorch.org/whl/cpu: the CPU torch wheel from
#    this machine plus its dependencies from PyPI.
index="$WORK/wheels"
if [[ ! -d "$index/simple/torch" ]]; then
  echo "== local torch index"
  torch_wheel="$(find "$TORCH_WHEEL_DIR" -name 'torch-*+cpu-cp311-*.whl' | sort | tail -n 1)"
  [[ -n "$torch_wheel" ]] || fail "no CPU torch wheel for cp311 in $TORCH_WHEEL_DIR"
  mkdir -p "$index/files"
  python3 -m pip download --quiet --only-binary :all: --dest "$index/files" "$torch_wheel"
  python3 - "$index" <<'EOF'
import pathlib, re, sys
index = pathlib.Path(sys.argv[1])
projects: dict[str, list[str]] = {}
for wheel in sorted((index / "files").glob("*.whl")):
    projects.setdefault(re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower(), []).append(wheel.name)
for project, wheels in projects.items():
    folder = index / "simple" / project
    folder.mkdir(parents=True, exist_ok=True)
    links = "".join(f'<a href="../../files/{w.replace("+", "%2B")}">{w}</a>\n' for w in wheels)
    (folder / "index.html").write_text(f"<!DOCTYPE html>\n<html><body>\n{links}</body></html>\n")
EOF
fi

# 3. Build. The build containers share the host's network (PyPI) and trust its CA bundle,
#    which this VM's TLS proxy needs; both are build-time mounts, not in the image.
echo "== build $IMAGE"
printf '[global]\ncert = /etc/ssl/certs/host-ca-certificates.crt\n' >"$WORK/pip.conf"
"${P[@]}" build --format docker --network host "${ULIMITS[@]}" \
  -v "$index:/wheels:ro" -v "$WORK/pip.conf:/etc/pip.conf:ro" \
  -v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/host-ca-certificates.crt:ro \
  --build-arg PYTHON_IMAGE="$BASE" --build-arg TORCH_VARIANT=cpu \
  --build-arg TORCH_CPU_INDEX_URL=file:///wheels/simple \
  -t "$IMAGE" . >"$WORK/build.log" 2>&1 || { tail -n 30 "$WORK/build.log"; fail "build failed"; }
"${P[@]}" image inspect "$IMAGE" --format 'image: {{.Size}} bytes, user {{.Config.User}}'

# 4. Run it as docker-compose.yml does: loopback port, named volume, read-only root, no caps.
cleanup() {
  "${P[@]}" rm -f -t 0 "$NAME" >/dev/null 2>&1 || true
  "${P[@]}" volume rm -f lenet-smoke-checkpoints >/dev/null 2>&1 || true
}
cleanup
trap cleanup EXIT
start() {
  "${P[@]}" run -d --name "$NAME" "${ULIMITS[@]}" -p "127.0.0.1:$PORT:8000" \
    -v lenet-smoke-checkpoints:/data/checkpoints --read-only --tmpfs /tmp \
    --cap-drop ALL --security-opt no-new-privileges \
    -e LENET_API_TOKEN="$TOKEN" -e LENET_SEED=0 -e LENET_DEVICE=auto "$IMAGE" >/dev/null
  for _ in $(seq 120); do
    if python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$PORT/readyz', timeout=2)" 2>/dev/null; then
      return 0
    fi
    sleep 1
  done
  "${P[@]}" logs "$NAME" | tail -n 30
  fail "no 200 from /readyz on 127.0.0.1:$PORT after 120 s"
}
echo "== run"
start
"${P[@]}" healthcheck run "$NAME" || fail "the image's HEALTHCHECK fails on a ready server"
echo "healthcheck: ok"

python3 - "$PORT" "$TOKEN" <<'EOF'
import json, sys, urllib.error, urllib.request
port, token = sys.argv[1:]
base = f"http://127.0.0.1:{port}"

def call(method, path, body=None, auth=True):
    request = urllib.request.Request(base + path, method=method, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if auth else {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)

model = call("GET", "/model")[1]
print("model:", model["parameters"], "parameters on", model["device"])
status, answer = call("POST", "/predict", {"inputs": [[0.0] * 32] * 32})
assert status == 200 and len(answer["outputs"][0]) == 10, (status, answer)
status, _ = call("POST", "/checkpoints", {}, auth=False)
assert status == 401, f"a checkpoint without the token answered {status}"
status, answer = call("POST", "/checkpoints", {})
assert status in (200, 201), (status, answer)
print("predict: ok; checkpoint without token: 401; with token:", status)
EOF

# 5. SIGTERM must reach the server (exec-form CMD): a clean exit well before the kill timeout.
echo "== stop"
started=$(date +%s)
"${P[@]}" stop -t 40 "$NAME" >/dev/null
took=$(( $(date +%s) - started ))
code="$("${P[@]}" inspect "$NAME" --format '{{.State.ExitCode}}')"
[[ "$code" == 0 ]] || { "${P[@]}" logs "$NAME" | tail -n 20; fail "exit code $code after SIGTERM"; }
echo "stopped in ${took}s, exit code 0"
"${P[@]}" run --rm "${ULIMITS[@]}" -v lenet-smoke-checkpoints:/data/checkpoints --entrypoint ls \
  "$IMAGE" -l /data/checkpoints
echo "podman_smoke: all passed"
