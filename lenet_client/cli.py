"""`lenet train`: its arguments, its output and its exit status.

`app.cli` (the `lenet` command) adds this parser and calls `run`. Building the parser loads
neither scikit-learn nor tqdm (the data sets and the progress bar load when a run needs them),
so `lenet serve` never loads them; nothing here loads torch, so `lenet train` never does.

Exit status: 0 when the run finished, 1 when the service refused a request or could not be
reached, 2 for unusable arguments or data, 130 when interrupted.
"""

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import urlsplit

from app.optimizers import OPTIMIZER_NAMES, TRAIN_CLIENT_DEFAULTS

if TYPE_CHECKING:
    from tqdm import tqdm

    from lenet_client.train import EpochResult, StepProgress, TrainPlan, TrainResult

DEFAULT_URL = "http://127.0.0.1:8000"
EXIT_OK, EXIT_SERVICE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows `(default: X)` after each option that has a value for a default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


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


def _http_url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(
            f"must be an http:// or https:// address such as {DEFAULT_URL}, got {text!r}"
        )
    return text


def _per_optimizer(field: str) -> str:
    # The client's defaults as `app.optimizers` states them: "sgd 0.03, adam 0.001, ...".
    return ", ".join(
        f"{name} {TRAIN_CLIENT_DEFAULTS[name][field]:g}"
        for name in OPTIMIZER_NAMES
        if field in TRAIN_CLIENT_DEFAULTS[name]
    )


def add_train_parser(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add `train` and its options to the `lenet` command's subcommands."""
    parser = commands.add_parser(
        "train",
        help="train a running service over HTTP",
        formatter_class=_DefaultsFormatter,
        description="Train a running lenet-serve through PUT /optimizer and POST /train-step, "
        "and measure held-out accuracy through POST /predict. The server's current weights "
        "are trained further (nothing is reset); the optimizer's state starts fresh. "
        "Exit status: 0 done, 1 the service refused a request or could not be reached, "
        "2 unusable arguments or data. The digits need the train extra: "
        "pip install 'lenet-serve[train]'.",
    )
    parser.add_argument("--url", type=_http_url, default=DEFAULT_URL, help="the service's address")
    parser.add_argument(
        "--dataset",
        choices=("digits", "mnist", "folder"),
        help="scikit-learn's 8x8 digits (the default), MNIST's IDX files, or a folder of "
        "images; implied by --mnist or --folder",
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
        help="share of each class held out for evaluation, digits and folder (split with a "
        "fixed seed; the web page holds out the same digits); MNIST holds out its t10k files",
    )
    parser.add_argument("--epochs", type=_positive_int, default=30, help="passes over the data")
    parser.add_argument("--batch-size", type=_positive_int, default=32, help="images per step")
    parser.add_argument("--optimizer", choices=OPTIMIZER_NAMES, default="sgd", help="optimizer")
    parser.add_argument("--lr", type=float, help=f"learning rate (default: {_per_optimizer('lr')})")
    parser.add_argument(
        "--momentum",
        type=float,
        help=f"momentum, for optimizers that have one (default: {_per_optimizer('momentum')})",
    )
    parser.add_argument(
        "--schedule",
        choices=("cosine", "constant"),
        default="cosine",
        help="cosine: a warm-up, then each step's lr decays from --lr towards 0, sent as "
        "/train-step's per-step lr; constant: the optimizer's lr throughout",
    )
    parser.add_argument(
        "--augment",
        type=_non_negative_int,
        default=2,
        metavar="PX",
        help="shift each training image by a random offset of up to PX pixels along each axis "
        "(0 turns it off); held-out images are never shifted",
    )
    parser.add_argument("--seed", type=int, default=0, help="order and shifts of the batches")
    parser.add_argument(
        "--token", help="bearer token for a protected service (default: $LENET_API_TOKEN)"
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument(
        "--quiet",
        "-q",
        action="store_true",
        help="print only the final result line; no progress bar",
    )
    output.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per line on stdout: one per epoch, then a summary; "
        "no progress bar",
    )
    parser.set_defaults(handler=run, resolve=resolve_dataset)


def resolve_dataset(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--mnist DIR or --folder DIR alone says which dataset is meant."""
    if args.dataset is None:
        given = [name for name in ("mnist", "folder") if getattr(args, name) is not None]
        if len(given) > 1:
            parser.error("give one of --mnist and --folder, or choose with --dataset")
        args.dataset = given[0] if given else "digits"


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"lenet train: error: {message}\n")
    return code


def run(args: argparse.Namespace) -> int:
    """Train as `args` say; the exit status (see the module's docstring)."""
    from lenet_client.client import LenetClient, LenetError, LenetHTTPError
    from lenet_client.datasets import DatasetError, load_digits, load_folder, load_mnist
    from lenet_client.train import TrainConfig, optimizer_body, train

    token = args.token if args.token is not None else os.environ.get("LENET_API_TOKEN")
    try:
        optimizer = optimizer_body(args.optimizer, args.lr, args.momentum)
    except ValueError as error:
        return _fail(str(error), EXIT_USAGE)
    try:
        if args.dataset == "mnist":
            if args.mnist is None:
                return _fail("--dataset mnist needs --mnist DIR (the four IDX files)", EXIT_USAGE)
            dataset = load_mnist(args.mnist)
        elif args.dataset == "folder":
            if args.folder is None:
                return _fail("--dataset folder needs --folder DIR (DIR/<0-9>/*.png)", EXIT_USAGE)
            dataset = load_folder(args.folder, args.eval_fraction, args.invert)
        else:
            dataset = load_digits(args.eval_fraction)
    except DatasetError as error:
        return _fail(str(error), EXIT_USAGE)
    config = TrainConfig(
        args.epochs, args.batch_size, optimizer, args.seed, args.schedule, args.augment
    )
    mode = "json" if args.json else "quiet" if args.quiet else "text"
    report = Report(dataset.describe(), mode, sys.stdout, progress=mode == "text" and _tty())
    try:
        with LenetClient(args.url, token=token or None) as client:
            result = train(client, dataset, config, report)
    except LenetHTTPError as error:
        if error.status == 401:
            hint = (
                "the token was refused; check --token / LENET_API_TOKEN"
                if token
                else "the server requires a token: pass --token or set LENET_API_TOKEN"
            )
            return _fail(f"{error.method} {error.path}: 401 Unauthorized: {hint}", EXIT_SERVICE)
        return _fail(str(error), EXIT_SERVICE)
    except LenetError as error:
        return _fail(f"{error} (--url sets the address)", EXIT_SERVICE)
    except KeyboardInterrupt:
        return _fail("interrupted; the steps already taken stay on the server", EXIT_INTERRUPTED)
    finally:
        report.close()
    report.finished(result, dataset.name)
    return EXIT_OK


def _tty() -> bool:
    return sys.stderr.isatty()


class Report:
    """`lenet train`'s output: lines of text (with a progress bar on a terminal), JSON lines,
    or only the last line. Results go to `out`, the bar to stderr."""

    def __init__(self, description: str, mode: str, out: TextIO, progress: bool) -> None:
        self.description = description
        self.mode = mode
        self.out = out
        self.progress = progress
        self.optimizer: dict[str, Any] = {}
        self._bar: tqdm[Any] | None = None

    def _line(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self.out)  # above the bar, which stays at the bottom
        else:
            self.out.write(text + "\n")
            self.out.flush()

    def started(self, plan: "TrainPlan") -> None:
        """The header line, and the bar when there is one."""
        self.optimizer = plan.optimizer
        if self.mode == "text":
            config, compact = plan.config, json.dumps(plan.optimizer, separators=(",", ":"))
            self._line(
                f"{self.description}\noptimizer {compact}, {config.schedule} schedule, shifts up "
                f"to {config.augment} px: {config.epochs} epoch{'s' if config.epochs > 1 else ''} "
                f"x {plan.steps_per_epoch} steps of {config.batch_size}, from server step "
                f"{plan.first_step}"
            )
        if self.progress:
            from tqdm import tqdm

            self._bar = tqdm(total=plan.total_steps, unit="step", desc="training", leave=False)

    def stepped(self, progress: "StepProgress") -> None:
        """Move the bar on."""
        if self._bar is not None:
            self._bar.set_postfix_str(
                f"epoch={progress.epoch} loss={progress.loss:.4f} acc={progress.accuracy:.4f}",
                refresh=False,
            )
            self._bar.update()

    def epoch_done(self, result: "EpochResult") -> None:
        """One line per epoch, except when quiet."""
        if self.mode == "json":
            self._line(json.dumps({"event": "epoch", **asdict(result)}))
        elif self.mode == "text":
            self._line(
                f"epoch {result.epoch}/{result.epochs}: train loss {result.train_loss:.4f}, "
                f"train accuracy {result.train_accuracy:.4f}, held-out accuracy "
                f"{result.held_out_accuracy:.4f}"
            )

    def close(self) -> None:
        """Take the bar off the terminal."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def finished(self, result: "TrainResult", dataset: str) -> None:
        """The final line, in every mode."""
        if self.mode == "json":
            summary = {"event": "summary", "dataset": dataset, "optimizer": self.optimizer}
            self._line(json.dumps({**summary, **asdict(result)}))
        else:
            self._line(
                f"held-out accuracy: {result.accuracy:.4f} ({result.correct}/{result.total}) "
                f"after {result.steps} steps in {result.seconds:.1f} s (server step "
                f"{result.last_step}, version {result.version})"
            )
