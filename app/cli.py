"""The `lenet` command: `lenet serve` runs the service; `lenet train` trains a running one."""

import argparse
import logging
import sys
from collections.abc import Sequence

from app.settings import Settings

logger = logging.getLogger("lenet.cli")

# Exit statuses of `lenet serve` besides 0: start-up failed (uvicorn's own 3), and the device
# failed while serving, for good (the orchestrator restarts the service).
STARTUP_FAILURE = 3
DEVICE_FAILURE = 4


def serve(args: argparse.Namespace) -> int:
    """Run the service with uvicorn; command-line options override LENET_ settings."""
    overrides = {key: value for key, value in vars(args).items() if key in ("host", "port")}
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    from app.observability import configure_logging

    configure_logging(settings)
    if not settings.host_is_loopback and settings.api_token is None:
        logger.warning(
            "serving on %s without LENET_API_TOKEN: anyone who can reach this port can train, "
            "reset or replace the model; set a token before exposing it",
            settings.host,
        )
    import uvicorn

    from app.guards import header_timeout_protocol
    from app.main import create_app  # after logging is set up, so start-up logs show

    app = create_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            # httptools, as uvicorn[standard] picks, plus a deadline for each request's headers.
            http=header_timeout_protocol(settings.header_timeout_s),
            log_level=settings.log_level,
            limit_concurrency=settings.limit_concurrency,
            timeout_keep_alive=settings.timeout_keep_alive,
            timeout_graceful_shutdown=settings.timeout_graceful_shutdown,
            # Logging is configured above; the access log is the app's own (LENET_ACCESS_LOG).
            log_config=None,
            access_log=False,
        )
    )
    engine = app.state.engine
    if settings.exit_on_device_failure:
        # A device that failed for good: drain and stop as on SIGTERM, then exit with status 4.
        engine.on_device_failed = lambda _reason: setattr(server, "should_exit", True)
    server.run()
    if not server.started:
        return STARTUP_FAILURE  # as uvicorn.run exits: the app did not start (no device, say)
    if engine.device_failed is not None:
        logger.critical(
            "exiting with status %d: the device failed (%s)", DEVICE_FAILURE, engine.device_failed
        )
        return DEVICE_FAILURE
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `lenet` argument parser."""
    parser = argparse.ArgumentParser(prog="lenet", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run the HTTP service")
    serve_parser.add_argument("--host", help="address to bind (LENET_HOST, default 127.0.0.1)")
    serve_parser.add_argument("--port", type=int, help="port (LENET_PORT, default 8000)")
    serve_parser.set_defaults(handler=serve)
    # `lenet train` is the client's (lenet_client.cli); its data sets and progress bars load
    # only when it runs (no scikit-learn for `lenet serve`), and nothing of it loads torch.
    from lenet_client.cli import add_train_parser

    add_train_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `lenet` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if hasattr(args, "resolve"):
        args.resolve(parser, args)
    result: int = args.handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
