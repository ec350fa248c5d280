"""`digitlab train`, and the commands that look at one run afterwards: `eval`, `plot` (`compare` is compare.py)."""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from digitlab.errors import ConfigError, RunError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from digitlab.calibration import Calibration


def cmd_train(args: argparse.Namespace) -> int:
    from digitlab.config import field_types, make_config
    from digitlab.resume import resume_config
    from digitlab.training import Terminated, TrainingInterrupted, train

    overrides = {k: v for k, v in vars(args).items() if k in field_types() and v is not None}
    if args.resume:
        if args.preset or args.config:
            raise ConfigError("--resume continues a run with its own recipe; drop --preset and --config")
        if args.force:
            raise ConfigError("--force is for a new run in a folder that holds files; --resume never replaces a run")
        cfg = resume_config(args.resume, **overrides)
    else:
        cfg = make_config(recipe_base(args), **overrides)
    try:  # progress bars only on a terminal: in a log file they would be thousands of carriage returns
        result = train(cfg, resume=bool(args.resume), progress=not args.no_progress and sys.stderr.isatty(),
                       force=args.force)
    except TrainingInterrupted as e:
        print(f"digitlab: {e}", file=sys.stderr)
        return e.exit_code
    except Terminated:  # before the run had a folder to speak of
        print("digitlab: terminated (SIGTERM) before training started", file=sys.stderr)
        return 143
    from digitlab.distributed import context_from_env

    if not context_from_env().is_main:
        return 0  # under torchrun, rank 0 reports for all ranks
    final, best = result.final, result.best_row
    print(f"run: {result.run_dir}")
    if (result.run_dir / "curves.png").is_file():
        print(f"curves: {result.run_dir / 'curves.png'}")
    print(final_line(final))
    if result.selected_on == "nothing":
        print("no best checkpoint: a fixed schedule selects nothing; the run's model is last.safetensors")
    else:
        its_test = f" (its test accuracy {best['test_accuracy']:.2%})" if best.get("test_accuracy") is not None else ""
        print(f"best checkpoint, selected on {result.selected_on} accuracy: {result.best_accuracy:.2%} at step "
              f"{best['step']}{its_test}")
    return 0


def final_line(final: dict) -> str:
    """The run's closing accuracy line, on test or (with --no-eval-test, which reads no test image) validation."""
    scored = "test" if final.get("test_accuracy") is not None else "val"
    words = "test accuracy" if scored == "test" else "validation accuracy (the test set was not read)"
    return (f"{words}: {final[f'{scored}_accuracy']:.2%} (loss {final[f'{scored}_loss']:.4f}) after "
            f"{count(final['epoch'], 'epoch')}, {final['elapsed_s']:.1f}s")


def count(n: float, noun: str) -> str:
    """'1 epoch', '2 epochs', '0.5 epochs': the number with its noun in the singular only for exactly one."""
    return f"{n:g} {noun}{'s' * (n != 1)}"


def recipe_base(args: argparse.Namespace) -> dict:
    """What the command line's flags override: --preset's recipe, with a --config file's fields over it; a bare
    `digitlab train` (no --preset, --config or --model) trains the `default` preset."""
    from digitlab.config_files import read_config_file
    from digitlab.presets import preset_config

    bare = not (args.preset or args.config or args.model)
    base = preset_config(args.preset or "default") if args.preset or bare else {}
    if not args.config:
        return base
    values = read_config_file(args.config)
    if "model" in values and values["model"] != base.get("model") and "model_args" not in values:
        base.pop("model_args", None)  # the preset's model options do not carry over to the file's model
    return {**base, **values}


def trained_with_tta(run_dir: Path) -> tuple[bool, bool]:
    """Whether the run's own evaluations used test-time augmentation, and mirror images in it, so `eval`
    reproduces its figures; (False, False) for a checkpoint outside a run folder."""
    from digitlab.runs import read_config

    if not (run_dir / "config.json").is_file():
        return False, False
    cfg = read_config(run_dir)
    return cfg.tta, cfg.tta_mirror


def tta_words(tta: bool, mirror: bool) -> str:
    """How eval's summary line names the test-time augmentation it used."""
    if not tta:
        return ""
    return f", test-time augmentation ({'shifts and mirror images' if mirror else 'shifts'})"


def figures_folder(args: argparse.Namespace, run_is_folder: bool, run_dir: Path) -> Path:
    """Where eval's figures go: --figures, else the run folder, else (a lone .safetensors file, which may be the
    weights shipped inside the package) the current folder. Created and checked before any work is done."""
    folder = Path(args.figures) if args.figures else (run_dir if run_is_folder else Path("."))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    except OSError as e:
        raise RunError(f"cannot write figures to {folder} ({e.strerror or e}); "
                       "choose a writable folder with --figures DIR") from None
    return folder


@dataclass
class EvalSubject:
    """What `eval` scores, a run's checkpoint or an exported .onnx file, and how its report names it."""

    where: str  # the run folder or the file, as the report names it
    name: str  # "best" or "last" for a run; the file's stem otherwise: the figures' names
    model: str
    calibration: Calibration
    logits: Callable[[torch.Tensor], torch.Tensor]  # uint8 test images -> logits (N, classes)
    figures: Path  # where figures go without --figures


def run_subject(args: argparse.Namespace) -> tuple[EvalSubject, str, tuple[bool, bool]]:
    """A run folder or .safetensors file: its model in PyTorch, on its own dataset; with the test-time augmentation
    the run's own evaluations used unless --tta says. Returns the subject, its dataset and how TTA was used."""
    from digitlab.runs import load_run
    from digitlab.evaluation import predict_logits

    loaded = load_run(args.run, args.checkpoint)
    if args.dataset is not None and args.dataset != loaded.dataset:
        raise ConfigError(f"{args.run} was trained on {loaded.dataset}: a run is evaluated on its own dataset "
                          "(--dataset is for .onnx files)")
    run_dir = loaded.source.parent
    tta, mirror = trained_with_tta(run_dir)
    tta = args.tta if args.tta is not None else tta
    mirror = tta and mirror
    subject = EvalSubject(str(run_dir), loaded.source.stem, loaded.model_name, loaded.calibration,
                          lambda images: predict_logits(loaded.model, images, loaded.normalization, batch_size=100,
                                                        tta=tta, mirror=mirror),
                          figures_folder(args, Path(args.run).is_dir(), run_dir))
    return subject, loaded.dataset, (tta, mirror)


def onnx_subject(args: argparse.Namespace) -> tuple[EvalSubject, str, tuple[bool, bool]]:
    """An .onnx file from `digitlab export`, vetted and run in ONNX Runtime as `predict --onnx` does, on the dataset
    its metadata names (or --dataset); --tta averages the four 1-pixel shifts (an exported file does not say
    whether its run's evaluations added mirror images)."""
    from digitlab.predict import Predictor

    predictor = Predictor.from_onnx(args.run)
    dataset = args.dataset or predictor.backend.meta.get("dataset")
    if not isinstance(dataset, str):
        raise ConfigError(f"{args.run} names no dataset in its metadata: give --dataset")
    tta = bool(args.tta)

    def logits(images: torch.Tensor) -> torch.Tensor:
        import torch

        views = tta_image_views(images.numpy()) if tta else [images.numpy()]
        return torch.from_numpy(sum(predictor.logits(view) for view in views) / len(views))

    subject = EvalSubject(str(args.run), Path(args.run).stem, predictor.info.name, predictor.info.calibration,
                          logits, figures_folder(args, False, Path(args.run).parent))
    return subject, dataset, (tta, False)


def tta_image_views(images: np.ndarray) -> list[np.ndarray]:
    """evaluation.tta_views' shifts on uint8 images (N, H, W) or (N, C, H, W): a shift moves pixels, so it commutes
    with the per-pixel normalisation the Predictor applies afterwards."""
    import numpy as np

    from digitlab.evaluation import SHIFTS

    return [images] + [np.roll(images, shift, axis=(-2, -1)) for shift in SHIFTS]


def cmd_eval(args: argparse.Namespace) -> int:
    from digitlab.commands.calibrate import calibration_lines, eval_calibration
    from digitlab.data import load_dataset
    from digitlab.evaluation import metrics_from_logits, most_confident_mistakes
    from digitlab.plots import plot_confusion, plot_grid
    from digitlab.predict import is_onnx_file

    subject, dataset, (tta, mirror) = onnx_subject(args) if is_onnx_file(args.run) else run_subject(args)
    figures, name, title = subject.figures, subject.name, f"{Path(subject.where).name} ({subject.name})"
    ds = load_dataset(dataset, args.data_dir, progress=not args.json)
    logits = subject.logits(ds.test_images)
    if logits.shape[1] != len(ds.classes):
        raise ConfigError(f"{args.run} answers {logits.shape[1]} classes; {ds.name} has {len(ds.classes)}")
    metrics = metrics_from_logits(logits, ds.test_labels, len(ds.classes))
    mistakes = most_confident_mistakes(logits / subject.calibration.temperature, ds.test_labels, k=25)
    titles = [f"{ds.classes[m['true']]} -> {ds.classes[m['predicted']]} {m['probability']:.0%}" for m in mistakes]
    try:
        confusion_png = plot_confusion(metrics["confusion"], list(ds.classes), figures / f"confusion-{name}.png",
                                       title=title)
        mistakes_png = plot_grid(ds.test_images[[m["index"] for m in mistakes]], titles,
                                 figures / f"misclassified-{name}.png",
                                 title="most confident mistakes (true -> predicted)")
        calibration, reliability_png = eval_calibration(subject.calibration, logits.numpy(), ds.test_labels.numpy(),
                                                        figures / f"reliability-{name}.png",
                                                        f"{title} on {ds.name} test")
    except OSError as e:
        raise RunError(f"cannot write figures to {figures} ({e.strerror or e}); "
                       "choose a writable folder with --figures DIR") from None
    report = {"run": subject.where, "checkpoint": name, "model": subject.model,
              "dataset": ds.name, "tta": tta, "tta_mirror": mirror, **metrics, "misclassified": mistakes,
              "calibration": calibration, "figures": {"confusion": str(confusion_png),
                                                      "misclassified": str(mistakes_png),
                                                      "reliability": str(reliability_png)}}
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{subject.where} [{name}] {subject.model} on {ds.name}: test accuracy "
          f"{metrics['accuracy']:.2%}, loss {metrics['loss']:.4f} ({metrics['count']:,} images"
          f"{tta_words(tta, mirror)})")
    print(f"{'class':<16}{'precision':>10}{'recall':>9}{'F1':>9}{'errors':>8}   (recall: the class's accuracy)")
    for i, class_name in enumerate(ds.classes):
        errors = sum(metrics["confusion"][i]) - metrics["confusion"][i][i]
        print(f"{i} {class_name:<14}{metrics['per_class_precision'][i]:>10.2%}{metrics['per_class_recall'][i]:>9.2%}"
              f"{metrics['per_class_f1'][i]:>9.2%}{errors:>8}")
    print(f"macro F1 {metrics['macro_f1']:.2%}")
    print("\n".join(calibration_lines(calibration)))
    print(f"wrote {confusion_png}, {mistakes_png} and {reliability_png}")
    return 0


PLOTTED_COLUMNS = ("step", "epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss",
                   "test_accuracy")
MAX_PLOT_POINTS = 2000  # rows drawn at most: a chart shows no more, and a long run's metrics.csv stays streamed


def cmd_plot(args: argparse.Namespace) -> int:
    from digitlab.plots import plot_curves
    from digitlab.runs import Thinned, iter_metrics

    run = Path(args.run)
    if not run.is_dir():
        raise RunError(f"{run} is not a run folder")
    drawn = Thinned(MAX_PLOT_POINTS)
    for row in iter_metrics(run, PLOTTED_COLUMNS):
        drawn.add(row)
    if not drawn.count:
        raise RunError(f"{run}/metrics.csv has no rows yet")
    history = drawn.rows
    out = plot_curves(history, Path(args.output) if args.output else run / "curves.png", title=run.name, x=args.x)
    thinned = f", {len(history):,} of them drawn" if len(history) < drawn.count else ""
    print(f"wrote {out} ({drawn.count:,} evaluations{thinned})")
    return 0
