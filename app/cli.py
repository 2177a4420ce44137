"""The `lenet` command: `lenet serve` runs the service; `lenet train` trains a running one."""

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from app.settings import Settings

logger = logging.getLogger("lenet.cli")


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
    from app.main import create_app  # after logging is set up, so start-up logs show

    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        limit_concurrency=settings.limit_concurrency,
        timeout_keep_alive=settings.timeout_keep_alive,
        timeout_graceful_shutdown=settings.timeout_graceful_shutdown,
        # Logging is configured above; the access log is the app's own (LENET_ACCESS_LOG).
        log_config=None,
        access_log=False,
    )
    return 0


def train(args: argparse.Namespace) -> int:
    """Train a running service through its HTTP API; 0 on success, 1 if the service failed us,
    2 for unusable arguments or data."""
    # Imported here so that `lenet serve` does not load scikit-learn, nor `lenet train` torch.
    from app.datasets import DatasetError, load_digits, load_folder, load_mnist
    from app.train_client import ServiceClient, ServiceError, TrainConfig, optimizer_body
    from app.train_client import train as run_training

    def fail(message: str, code: int) -> int:
        sys.stderr.write(f"lenet train: error: {message}\n")
        return code

    token = args.token if args.token is not None else os.environ.get("LENET_API_TOKEN")
    try:
        optimizer = optimizer_body(args.optimizer, args.lr, args.momentum)
    except ValueError as error:
        return fail(str(error), 2)
    try:
        if args.dataset == "mnist":
            if args.mnist is None:
                return fail("--dataset mnist needs --mnist DIR (the four IDX files)", 2)
            dataset = load_mnist(args.mnist)
        elif args.dataset == "folder":
            if args.folder is None:
                return fail("--dataset folder needs --folder DIR (DIR/<0-9>/*.png)", 2)
            dataset = load_folder(args.folder, args.eval_fraction, args.invert)
        else:
            dataset = load_digits(args.eval_fraction)
    except DatasetError as error:
        return fail(str(error), 2)
    config = TrainConfig(
        args.epochs, args.batch_size, optimizer, args.seed, args.schedule, args.augment
    )
    try:
        with ServiceClient(args.url, token or None) as client:
            run_training(client, dataset, config)
    except ServiceError as error:
        return fail(str(error), 1)
    except KeyboardInterrupt:
        return fail("interrupted; the steps already taken stay on the server", 130)
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def _add_train_parser(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = commands.add_parser(
        "train",
        help="train a running service over HTTP",
        description="Train a running lenet-serve through PUT /optimizer and POST /train-step, "
        "and measure held-out accuracy through POST /predict. The server's current weights "
        "are trained further (nothing is reset); the optimizer's state starts fresh.",
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the service's address")
    parser.add_argument(
        "--dataset",
        choices=("digits", "mnist", "folder"),
        help="scikit-learn's 8x8 digits (default), MNIST's IDX files, or a folder of images; "
        "implied by --mnist or --folder",
    )
    parser.add_argument("--mnist", type=Path, metavar="DIR", help="folder of MNIST's IDX files")
    parser.add_argument("--folder", type=Path, metavar="DIR", help="images in DIR/<0-9>/")
    parser.add_argument(
        "--invert", action="store_true", help="folder images are dark on light: invert them"
    )
    parser.add_argument(
        "--eval-fraction",
        type=_fraction,
        default=0.2,
        help="share of each class held out for evaluation, digits and folder (default 0.2, "
        "split with a fixed seed); MNIST holds out its t10k files",
    )
    parser.add_argument("--epochs", type=_positive_int, default=30, help="default 30")
    parser.add_argument("--batch-size", type=_positive_int, default=32, help="default 32")
    parser.add_argument(
        "--optimizer",
        choices=("sgd", "adam", "adamw", "rmsprop"),
        default="sgd",
        help="default sgd",
    )
    parser.add_argument(
        "--lr", type=float, help="learning rate (default 0.03 for sgd, 0.001 for the others)"
    )
    parser.add_argument(
        "--momentum", type=float, help="sgd and rmsprop only (default 0.9 for sgd, 0 for rmsprop)"
    )
    parser.add_argument(
        "--schedule",
        choices=("cosine", "constant"),
        default="cosine",
        help="cosine (default): a warm-up, then each step's lr decays from --lr towards 0, "
        "sent as /train-step's per-step lr; constant: the optimizer's lr throughout",
    )
    parser.add_argument(
        "--augment",
        type=_non_negative_int,
        default=2,
        metavar="PX",
        help="shift each training image by a random offset of up to PX pixels along each axis "
        "(default 2; 0 turns it off); held-out images are never shifted",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="order and shifts of the batches (default 0)"
    )
    parser.add_argument(
        "--token", help="bearer token for a protected service (default: $LENET_API_TOKEN)"
    )
    parser.set_defaults(handler=train)


def _resolve_dataset(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    # --mnist DIR or --folder DIR alone says which dataset is meant.
    if args.dataset is None:
        given = [name for name in ("mnist", "folder") if getattr(args, name) is not None]
        if len(given) > 1:
            parser.error("give one of --mnist and --folder, or choose with --dataset")
        args.dataset = given[0] if given else "digits"


def build_parser() -> argparse.ArgumentParser:
    """The `lenet` argument parser."""
    parser = argparse.ArgumentParser(prog="lenet", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run the HTTP service")
    serve_parser.add_argument("--host", help="address to bind (LENET_HOST, default 127.0.0.1)")
    serve_parser.add_argument("--port", type=int, help="port (LENET_PORT, default 8000)")
    serve_parser.set_defaults(handler=serve)
    _add_train_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `lenet` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train":
        _resolve_dataset(parser, args)
    result: int = args.handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
