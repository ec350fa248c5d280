"""The `digitlab` command: a thin layer over the library. Each subcommand parses, calls, prints.

Errors a user can fix (DigitlabError) print one line on stderr and exit with status 1; bad flags
exit with status 2, as argparse does, but also in one line.
"""
from __future__ import annotations

import argparse
import difflib
import inspect
import re
import sys

from digitlab import __version__
from digitlab.errors import DigitlabError


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line, without the usage block. Flags are never abbreviated (`--epoch 3`
    would otherwise be taken as `--epochs 3` without a word), and an unknown flag is refused by the (sub)command
    that met it, naming the flags it may have meant."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}{self.suggestion(extras)}")
        return namespace, extras

    def suggestion(self, extras: list[str]) -> str:
        """'; did you mean --epochs?' for the flags among `extras` that begin one of this parser's flags or are
        spelled nearly like one."""
        known = [flag for flag in self._option_string_actions if flag.startswith("--")]
        guesses: list[str] = []
        for extra in (e.split("=", 1)[0] for e in extras if e.startswith("--")):
            starting = [flag for flag in known if flag.startswith(extra)]
            guesses += starting[:3] or difflib.get_close_matches(extra, known, n=1, cutoff=0.8)
        return f"; did you mean {' or '.join(dict.fromkeys(guesses))}?" if guesses else ""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where None means 'not given': the recipe flags, whose help
    already names TrainConfig's default, would otherwise read "(default: 0) (default: None)"."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def field_comments() -> dict[str, str]:
    """TrainConfig's inline field comments, reused as --help text so the two never drift apart."""
    from digitlab.config import TrainConfig

    source = inspect.getsource(TrainConfig)
    return {m.group(1): m.group(2) for m in re.finditer(r"^\s+(\w+): [^=]+=.*?#\s*(.+)$", source, re.M)}


def show_default(value: object) -> str:
    """A default as it would be typed on the command line: 0.004, width=16, none."""
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def add_config_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One flag per TrainConfig field (--batch-size, --model-args ...), all defaulting to 'not given'. The help
    shows what a bare `digitlab train` uses: the `default` preset's value where it sets one, else TrainConfig's."""
    from digitlab.config import config_fields
    from digitlab.presets import preset_config

    comments = field_comments()
    preset = preset_config("default")
    group = parser.add_argument_group(
        "recipe fields (each overrides the preset)",
        "The defaults shown are what a bare `digitlab train` uses: preset 'default' where it sets the field, "
        "else TrainConfig's. `--model M` without --preset starts from TrainConfig's.")
    for name, type_, default in config_fields():
        if name == "preset" or name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        if name in preset and preset[name] != default:
            shown = f"{show_default(preset[name])} from preset 'default'; TrainConfig: {show_default(default)}"
        else:
            shown = show_default(default)
        text = f"{comments.get(name, '')} (default: {shown})".replace("%", "%%")
        if type_ is bool:
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            metavar = "K=V,..." if type_ is dict else type_.__name__.upper()
            group.add_argument(flag, dest=name, type=str, default=None, metavar=metavar, help=text)


def add_sweep_parser(sub, fmt) -> None:
    """`digitlab sweep --study NAME ...` (run trials; every train flag passes through) and `sweep show NAME`."""
    sweep = sub.add_parser("sweep", help="hyperparameter search on Optuna: trials are run folders chosen on "
                           "validation", formatter_class=fmt)
    sweep.set_defaults(help_of=sweep)
    sweep.add_argument("--study", default=None, metavar="NAME", help="the study: a new name starts one, an existing "
                       "one goes on (its trials add up across commands and machines)")
    sweep.add_argument("--storage", default=None, metavar="URL",
                       help="study database: postgresql://USER@HOST:PORT/DB to share it between machines "
                            "(default: sqlite:///runs/sweeps.db)")
    sweep.add_argument("--trials", type=int, default=10, help="trials this command adds to the study")
    sweep.add_argument("--param", action="append", default=None, metavar="NAME=SPEC",
                       help="a searched field: NAME=LOW:HIGH, NAME=LOW:HIGH:log or NAME=a,b,c; NAME is any recipe "
                            "field or model_args.KEY (repeatable)")
    sweep.add_argument("--space", default=None, metavar="FILE.toml", help="searched fields from a TOML file, "
                       "one [NAME] table each with low, high (, log) or choices")
    sweep.add_argument("--jobs", type=int, default=1, help="trials at once, as processes here, the cores divided")
    sweep.add_argument("--pruner", default="median", choices=["median", "hyperband", "none"],
                       help="stop trials that trail the others at the same step (reports: each validation)")
    sweep.add_argument("--out", dest="sweep_out", default=None, metavar="DIR",
                       help="folder for the trials (DIR/trial-NNNN), the plots and best.toml "
                            "(default: runs/sweeps/STUDY)")
    sweep.add_argument("--preset", default=None, help="the base recipe (default: the `default` preset)")
    sweep.add_argument("--config", default=None, metavar="FILE.toml", help="a base recipe file, over --preset")
    add_config_flags(sweep, skip=("out",))
    shows = sweep.add_subparsers(dest="sweep_command", title="commands", metavar="COMMAND", parser_class=Parser)
    show = shows.add_parser("show", help="a study's trials, best trial, plots and best.toml", formatter_class=fmt)
    show.add_argument("name", help="the study")
    show.add_argument("--storage", default=None, metavar="URL", help="as given to `digitlab sweep`")
    show.add_argument("--json", action="store_true", help="print JSON (a `trials` list with state and value)")
    show.add_argument("--out", default=None, metavar="DIR", help="folder for the plots and best.toml "
                      "(default: the study's sweep folder)")
    show.add_argument("--no-figures", action="store_true", help="no plots")


def build_parser() -> argparse.ArgumentParser:
    fmt = HelpFormatter
    parser = Parser(prog="digitlab", description="Train, compare, explain and serve digit classifiers.",
                    formatter_class=fmt)
    parser.add_argument("--version", action="version", version=f"digitlab {__version__}")
    # Not required: a bare `digitlab` (or `digitlab data`) prints its help and exits 0, see main().
    sub = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND", parser_class=Parser)

    data_parser = sub.add_parser("data", help="inspect a dataset", formatter_class=fmt)
    parser.set_defaults(help_of=parser)
    data_parser.set_defaults(help_of=data_parser)
    data = data_parser.add_subparsers(dest="data_command", title="commands", metavar="COMMAND", parser_class=Parser)
    info = data.add_parser("info", help="sizes, classes, counts, file locations", formatter_class=fmt)
    show = data.add_parser("show", help="a grid of samples as PNG", formatter_class=fmt,
                           description="A grid of samples as PNG, written to the current folder (or -o); the "
                                       "command prints its path.")
    for p in (info, show):
        p.add_argument("--dataset", default="mnist", help="mnist or fashion-mnist")
        p.add_argument("--data-dir", default=None, help="folder with the IDX files")
    info.add_argument("--json", action="store_true", help="print JSON")
    show.add_argument("-n", type=int, default=25, help="number of images")
    show.add_argument("-o", "--output", default="samples.png", help="PNG file to write (relative to the current "
                      "folder)")
    show.add_argument("--split", default="train", choices=["train", "test"])
    show.add_argument("--seed", type=int, default=0, help="which samples (random, seeded)")

    models = sub.add_parser("models", help="list models and presets with parameter counts", formatter_class=fmt)
    models.add_argument("--json", action="store_true")
    summary = sub.add_parser("summary", help="layer-by-layer output shapes of a model", formatter_class=fmt)
    summary.add_argument("model", help="model name (see `digitlab models`) or preset name")
    summary.add_argument("--model-args", default=None, help="builder options, e.g. hidden_size=64")

    train = sub.add_parser("train", help="train a model (a preset, or any --model)", formatter_class=fmt)
    train.add_argument("--preset", default=None, help="start from a named recipe (see `digitlab models`)")
    train.add_argument("--config", default=None, metavar="FILE.toml",
                       help="a recipe file (TrainConfig fields; a sweep writes its best trial as one): over --preset, "
                            "under the flags")
    train.add_argument("--resume", default=None, metavar="RUN", help="continue RUN from its last checkpoint")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.add_argument("--force", action="store_true",
                       help="let --out name a folder that holds files; a previous run's files there are removed")
    add_config_flags(train)

    add_sweep_parser(sub, fmt)

    ev = sub.add_parser("eval", help="test metrics, per-class table, confusion and mistakes", formatter_class=fmt,
                        description="Test metrics and a per-class table; the figures (confusion, mistakes, "
                                    "reliability) go in the run folder, or --figures DIR, and their paths are printed.")
    ev.add_argument("run", help="run folder, .safetensors file, or .onnx file from `digitlab export`")
    ev.add_argument("--checkpoint", default="best", choices=["best", "last"])
    ev.add_argument("--dataset", default=None,
                    help="test set for an .onnx file (default: the dataset named in its metadata); a run is "
                         "evaluated on the dataset it was trained on")
    ev.add_argument("--json", action="store_true", help="print JSON instead of tables")
    ev.add_argument("--data-dir", default=None)
    ev.add_argument("--figures", default=None, metavar="DIR",
                    help="folder for confusion-, misclassified- and reliability-<checkpoint>.png "
                         "(default: the run folder; for a lone .safetensors file, the current folder)")
    ev.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                    help="average over 1-pixel shifts, and their mirror images where the run's own evaluations "
                         "added them (default: as the run was evaluated in training)")

    cal = sub.add_parser("calibrate", help="fit a run's temperature on its validation hold-out, so its "
                         "probabilities mean what they say", formatter_class=fmt)
    cal.add_argument("run", help="run folder or .safetensors file")
    cal.add_argument("--checkpoint", default="both", choices=["best", "last", "both"],
                     help="which of a run's checkpoints")
    cal.add_argument("--val-size", type=int, default=None, metavar="N",
                     help="for a lone .safetensors file: the hold-out it was trained without (a run folder's config "
                          "says it; default: the one its temperature was last fitted on)")
    cal.add_argument("--data-dir", default=None)
    cal.add_argument("--json", action="store_true", help="print JSON: each file's calibration record")

    plot = sub.add_parser("plot", help="draw curves.png for a run", formatter_class=fmt,
                          description="Draw a run's loss and accuracy curves (train, validation, test) as "
                                      "RUN/curves.png, or -o FILE; the command prints the path.")
    plot.add_argument("run")
    plot.add_argument("--x", default="step", choices=["step", "epoch"], help="x axis")
    plot.add_argument("-o", "--output", default=None, help="PNG file (default RUN/curves.png)")

    compare = sub.add_parser("compare", help="one table, the spread over seeds and one chart across finished runs",
                             formatter_class=fmt,
                             description="One table, the spread over seeds and one chart across finished runs; the "
                                         "chart is about several runs, so it goes in the current folder (or -o), "
                                         "and its path is printed.")
    compare.add_argument("runs", nargs="+", metavar="RUN", help="run folders")
    compare.add_argument("-o", "--output", default="compare.png", help="PNG file for the chart (relative to the "
                         "current folder)")
    compare.add_argument("--json", action="store_true", help="print JSON instead of the table")
    compare.add_argument("--include-unfinished", action="store_true",
                         help="show runs stopped before their planned end, marked (never in a recipe's spread)")

    pred = sub.add_parser("predict", help="predict test images or image files", formatter_class=fmt)
    pred.add_argument("inputs", nargs="*", help="[RUN] then image files or folders; RUN: a run folder, .safetensors "
                      "or .onnx file (from `digitlab export`, as --onnx); no RUN: shipped model")
    pred.add_argument("--test-index", type=int, default=None, help="predict this test-set image")
    pred.add_argument("--checkpoint", default="best", choices=["best", "last"])
    pred.add_argument("--save", default=None, help="with --test-index: save the image as PNG")
    pred.add_argument("--top-k", type=int, default=3)
    pred.add_argument("--json", action="store_true")
    pred.add_argument("--data-dir", default=None)
    pred.add_argument("--onnx", default=None, metavar="MODEL.onnx",
                      help="predict with this file from `digitlab export` in onnxruntime instead of a run")
    pred.add_argument("--save-preprocessed", default=None, metavar="DIR",
                      help="write what the model saw for each image file, as DIR/<stem>.png (28x28)")

    explain = sub.add_parser("explain", help="why a model says what it says: heat maps, layer activations, "
                             "an embedding map", formatter_class=fmt,
                             description="Why a model says what it says. The heat maps (explain.png) and layers "
                                         "(layers.png) are about the images given and go in the current folder; "
                                         "the embedding map of a run's test set goes in the run folder "
                                         "(embedding.png); -o puts any of them elsewhere. The path is printed.")
    explain.add_argument("inputs", nargs="*", help="[RUN] then image files or folders; no RUN: shipped model")
    explain.add_argument("--test-index", type=int, nargs="+", default=None, metavar="N",
                         help="explain these test-set images")
    explain.add_argument("--method", default="ig", choices=["ig", "saliency", "occlusion", "gradcam"],
                         help="Integrated Gradients, saliency, occlusion, or Grad-CAM (conv nets)")
    explain.add_argument("--target", type=int, default=None, metavar="CLASS",
                         help="explain this class (default: the predicted class and the runner-up)")
    explain.add_argument("-o", "--output", default=None,
                         help="PNG to write (default: explain.png or layers.png in the current folder; RUN/"
                              "embedding.png, or embedding.png here for the shipped model or a lone file; none "
                              "with --json)")
    explain.add_argument("--json", action="store_true", help="print the numbers as JSON")
    explain.add_argument("--layers", action="store_true", help="each layer's activations for one input")
    explain.add_argument("--embedding", action="store_true",
                         help="penultimate-layer features of the test set in 2-D (PCA, then t-SNE)")
    explain.add_argument("--limit", type=int, default=2000, help="with --embedding: the first N test images")
    explain.add_argument("--checkpoint", default="best", choices=["best", "last"])
    explain.add_argument("--data-dir", default=None)

    export = sub.add_parser("export", help="export a run to ONNX or TorchScript, checked against PyTorch",
                            formatter_class=fmt)
    export.add_argument("run", help="run folder or .safetensors file")
    export.add_argument("--checkpoint", default="best", choices=["best", "last"])
    export.add_argument("--format", default="onnx", choices=["onnx", "torchscript"],
                        help="onnx: what `predict --onnx`, `eval` and `serve` take, and ONNX Runtime anywhere; "
                             "torchscript: for your own libtorch or torch.jit.load deployment (digitlab never loads "
                             "TorchScript: loading it runs the code inside)")
    export.add_argument("-o", "--output", default=None, help="file to write (default RUN/model.onnx or RUN/model.pt)")
    export.add_argument("--check-images", type=int, default=1000,
                        help="test images on which the export must match PyTorch (logits within 1e-4, same argmax)")
    export.add_argument("--dynamo", action="store_true", help="use torch.onnx's dynamo exporter (slower)")
    export.add_argument("--data-dir", default=None, help="folder with the IDX files for the check")

    serve = sub.add_parser("serve", help="web page and REST API: draw a digit, see the probabilities",
                           formatter_class=fmt)
    serve.add_argument("run", nargs="?", default=None,
                       help="run folder, .safetensors file, or .onnx file from `digitlab export`; none: shipped model")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on")
    serve.add_argument("--checkpoint", default="best", choices=["best", "last"])
    serve.add_argument("--threads", type=int, default=1, help="CPU threads torch uses per prediction")
    serve.add_argument("--runtime", default="onnx", choices=["onnx", "torch"],
                       help="inference engine; ONNX Runtime is the faster one for single images")
    serve.add_argument("--allowed-host", action="append", default=None, metavar="NAME",
                       help="a Host header to answer (repeatable; '*.a.org' for subdomains, '*' for any); "
                            "default: the --host address, localhost, 127.0.0.1 and [::1]")
    serve.add_argument("--cors-origin", action="append", default=None, metavar="ORIGIN",
                       help="let pages of this origin (e.g. https://a.org) call the API (repeatable); default: none")
    serve.add_argument("--workers", type=int, default=None,
                       help="worker processes that decode, preprocess and predict (default: min(2, CPUs)); 0: "
                            "threads in the server process, where a request past its deadline cannot be stopped")
    serve.add_argument("--max-batch", type=int, default=16,
                       help="requests a worker gathers into one model call; 1: no batching")
    serve.add_argument("--batch-wait-ms", type=float, default=2.0,
                       help="how long a worker waits for more requests to fill a batch")
    serve.add_argument("--queue-size", type=int, default=64,
                       help="requests waiting for a worker; beyond it the server answers 503 at once")
    serve.add_argument("--explain-queue-size", type=int, default=4,
                       help="explanations (/api/explain) waiting, in a queue of their own; beyond it 503 at once")
    serve.add_argument("--explain-workers", type=int, default=0,
                       help="workers that may compute an explanation at once (0: half of them, at least one; "
                            "with two or more workers one always stays free for predictions)")
    serve.add_argument("--deadline", type=float, default=10.0,
                       help="seconds a request may take from arrival to answer; later is 503 and its worker is "
                            "killed and replaced")
    serve.add_argument("--worker-memory-mb", type=int, default=1024,
                       help="address space a worker may use beyond its loaded model (0: no cap)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command is None or (args.command == "data" and args.data_command is None):
        args.help_of.print_help()  # no command given: say which there are
        return 0
    from digitlab import commands

    handler = getattr(commands, f"cmd_{args.command}")
    try:
        return handler(args) or 0
    except DigitlabError as e:
        print(f"digitlab: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("digitlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
