"""What each `digitlab` subcommand does: call the library, print the result. No ML logic here."""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from digitlab.errors import ConfigError, DigitlabError, RunError
from digitlab.formats import FORMATS_TEXT, image_suffixes, refused_suffixes

if TYPE_CHECKING:  # torch is imported by the commands that use it: `digitlab predict` can run without it
    import torch


def cmd_data(args: argparse.Namespace) -> int:
    from digitlab.data import dataset_info, load_dataset

    ds = load_dataset(args.dataset, args.data_dir)
    if args.data_command == "info":
        info = dataset_info(ds)
        if args.json:
            print(json.dumps(info, indent=2))
            return 0
        print(f"{info['name']}: {info['train_size']:,} train + {info['test_size']:,} test images, "
              f"{info['image_shape'][0]}x{info['image_shape'][1]} {info['dtype']}, "
              f"pixel mean {info['train_pixel_mean']} std {info['train_pixel_std']} (train, in [0,1])")
        print(f"{'class':<6}{'name':<14}{'train':>8}{'test':>8}")
        for i, name in enumerate(info["classes"]):
            print(f"{i:<6}{name:<14}{info['train_counts'][i]:>8,}{info['test_counts'][i]:>8,}")
        print("files:")
        for stem, path in info["sources"].items():
            print(f"  {stem:<26}{path}")
        return 0
    import torch

    from digitlab.plots import plot_grid

    if args.n < 1:
        raise ConfigError("-n must be at least 1")
    images, labels = ds.split(args.split)
    idx = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(args.seed))[:args.n]
    titles = [ds.classes[int(labels[i])] for i in idx]
    out = plot_grid(images[idx], titles, Path(args.output), title=f"{ds.name} {args.split}")
    print(f"wrote {out} ({len(idx)} {ds.name} {args.split} images)")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from digitlab.models import count_parameters, create_model, get_builder, list_models
    from digitlab.presets import PRESETS

    models = [{"name": n, "parameters": count_parameters(create_model(n)),
               "description": (get_builder(n).__doc__ or "").strip()} for n in list_models()]
    presets = [{"name": n, "model": p.config["model"], "model_args": p.config.get("model_args", {}),
                "parameters": count_parameters(create_model(p.config["model"], **p.config.get("model_args", {}))),
                "dataset": p.config.get("dataset", "mnist"), "epochs": p.config.get("epochs"),
                "published": p.published, "measured": p.measured, "selection": p.selection,
                "description": p.description} for n, p in PRESETS.items()]
    if args.json:
        print(json.dumps({"models": models, "presets": presets}, indent=2))
        return 0
    print("models (default options):")
    for m in models:
        print(f"  {m['name']:<10}{m['parameters']:>12,} params  {m['description']}")
    print("\npresets (digitlab train --preset NAME); `published`: the recipe's source reports it, `measured`: "
          "digitlab measured its own recipe:")
    for p in presets:
        print(f"  {p['name']:<16}{p['model']:<9}{p['parameters']:>12,} params  {p['dataset']:<14}"
              f"{p['epochs']:>3} ep  {'measured' if p['measured'] else 'published'}: {p['published']}")
        print(f"  {'':<16}model selection: {p['selection']}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from digitlab.config import parse_model_args
    from digitlab.models import check_model_args, create_model, list_models
    from digitlab.presets import PRESETS
    from digitlab.summary import format_summary

    name, model_args = args.model, {}
    if name in PRESETS and name not in list_models():
        name, model_args = PRESETS[name].config["model"], dict(PRESETS[name].config.get("model_args", {}))
    if args.model_args:
        model_args.update(parse_model_args(args.model_args))
    check_model_args(name, model_args)  # on the meta device first: a model too big to build is one line
    print(format_summary(name, create_model(name, **model_args)))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from digitlab.config import field_types, make_config
    from digitlab.presets import preset_config
    from digitlab.resume import resume_config
    from digitlab.train import TrainingInterrupted, train

    overrides = {k: v for k, v in vars(args).items() if k in field_types() and v is not None}
    if args.resume:
        if args.preset:
            raise ConfigError("--resume continues a run with its own recipe; drop --preset")
        if args.force:
            raise ConfigError("--force is for a new run in a folder that holds files; --resume never replaces a run")
        cfg = resume_config(args.resume, **overrides)
    else:
        preset = args.preset or (None if args.model else "default")  # bare `digitlab train`: the default recipe
        cfg = make_config(preset_config(preset) if preset else {}, **overrides)
    try:  # progress bars only on a terminal: in a log file they would be thousands of carriage returns
        result = train(cfg, resume=bool(args.resume), progress=not args.no_progress and sys.stderr.isatty(),
                       force=args.force)
    except TrainingInterrupted as e:
        print(f"digitlab: {e}", file=sys.stderr)
        return 130
    from digitlab.distributed import context_from_env

    if not context_from_env().is_main:
        return 0  # under torchrun, rank 0 reports for all ranks
    final, best = result.final, result.best_row
    print(f"run: {result.run_dir}")
    print(f"test accuracy: {final['test_accuracy']:.2%} (loss {final['test_loss']:.4f}) after "
          f"{final['epoch']:g} epochs, {final['elapsed_s']:.1f}s")
    print(f"best checkpoint, selected on {result.selected_on} accuracy: {result.best_accuracy:.2%} at step "
          f"{best['step']} (its test accuracy {best['test_accuracy']:.2%})")
    return 0


def trained_with_tta(run_dir: Path) -> bool:
    """Whether the run's own evaluations used test-time augmentation, so `eval` reproduces its figures;
    False for a checkpoint outside a run folder."""
    from digitlab.runs import read_config

    return (run_dir / "config.json").is_file() and read_config(run_dir).tta


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


def cmd_eval(args: argparse.Namespace) -> int:
    from digitlab.data import load_dataset
    from digitlab.evaluate import metrics_from_logits, most_confident_mistakes, predict_logits
    from digitlab.plots import plot_confusion, plot_grid
    from digitlab.checkpoint import load_run

    loaded = load_run(args.run, args.checkpoint)
    run_dir = loaded.source.parent
    figures = figures_folder(args, Path(args.run).is_dir(), run_dir)
    name = loaded.source.stem  # "best" or "last" for a run; the file's name for a lone .safetensors file
    tta = args.tta if args.tta is not None else trained_with_tta(run_dir)
    ds = load_dataset(loaded.dataset, args.data_dir, progress=not args.json)
    logits = predict_logits(loaded.model, ds.test_images, loaded.normalization, batch_size=100, tta=tta)
    metrics = metrics_from_logits(logits, ds.test_labels)
    mistakes = most_confident_mistakes(logits, ds.test_labels, k=25)
    titles = [f"{ds.classes[m['true']]} -> {ds.classes[m['predicted']]} {m['probability']:.0%}" for m in mistakes]
    try:
        confusion_png = plot_confusion(metrics["confusion"], list(ds.classes), figures / f"confusion-{name}.png",
                                       title=f"{run_dir.name} ({name})")
        mistakes_png = plot_grid(ds.test_images[[m["index"] for m in mistakes]], titles,
                                 figures / f"misclassified-{name}.png",
                                 title="most confident mistakes (true -> predicted)")
    except OSError as e:
        raise RunError(f"cannot write figures to {figures} ({e.strerror or e}); "
                       "choose a writable folder with --figures DIR") from None
    report = {"run": str(run_dir), "checkpoint": name, "model": loaded.model_name,
              "dataset": ds.name, "tta": tta, **metrics, "misclassified": mistakes,
              "figures": {"confusion": str(confusion_png), "misclassified": str(mistakes_png)}}
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{run_dir} [{name}] {loaded.model_name} on {ds.name}: test accuracy "
          f"{metrics['accuracy']:.2%}, loss {metrics['loss']:.4f} ({metrics['count']:,} images"
          f"{', test-time augmentation' if tta else ''})")
    print(f"{'class':<16}{'accuracy':>9}{'errors':>8}")
    for i, class_name in enumerate(ds.classes):
        errors = sum(metrics["confusion"][i]) - metrics["confusion"][i][i]
        print(f"{i} {class_name:<14}{metrics['per_class_accuracy'][i]:>9.2%}{errors:>8}")
    print(f"wrote {confusion_png} and {mistakes_png}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from digitlab.plots import plot_curves
    from digitlab.runs import read_metrics

    run = Path(args.run)
    if not run.is_dir():
        raise RunError(f"{run} is not a run folder")
    history = read_metrics(run)
    if not history:
        raise RunError(f"{run}/metrics.csv has no rows yet")
    out = plot_curves(history, Path(args.output) if args.output else run / "curves.png", title=run.name, x=args.x)
    print(f"wrote {out} ({len(history)} evaluations)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from digitlab.compare import IncompleteRun, recipe_spread, run_summary
    from digitlab.plots import plot_compare

    runs, summaries, skipped = [], [], []
    for run in map(Path, args.runs):  # `compare runs/*` goes on past a run that never got to its first evaluation
        try:
            summaries.append(run_summary(run))
            runs.append(run)
        except IncompleteRun as e:
            skipped.append(str(e))
    if not runs:
        raise RunError(f"no run to compare: {'; '.join(skipped)}")
    for reason in skipped:
        print(f"digitlab: warning: skipping {reason}", file=sys.stderr)
    names = [run.name for run in runs]
    if len(set(names)) < len(names):  # same folder name under different parents: use the paths
        names = [str(run) for run in runs]
    out = plot_compare({name: history for name, (_, history) in zip(names, summaries)}, Path(args.output),
                       datasets={name: row["dataset"] for name, (row, _) in zip(names, summaries)})
    rows = [row for row, _ in summaries]
    spread = recipe_spread(rows)
    if args.json:
        print(json.dumps({"runs": rows, "recipes": spread, "figure": str(out)}, indent=2))
        return 0
    width = max(len(n) for n in names) + 2
    print(f"{'run':<{width}}{'preset/model':<22}{'dataset':<15}{'epochs':>7}{'final':>9}{'best':>9}{'s/epoch':>9}")
    for name, row in zip(names, rows):
        recipe = f"{row['preset'] or '-'}/{row['model']}"
        per_epoch = f"{row['seconds_per_epoch']:.1f}" if row["seconds_per_epoch"] is not None else "-"
        print(f"{name:<{width}}{recipe:<22}{row['dataset']:<15}{row['epochs']:>7g}{row['final_accuracy']:>9.2%}"
              f"{row['best_accuracy']:>9.2%}{per_epoch:>9}")
    for group in spread:
        members = ", ".join(Path(r).name for r in group["runs"])
        print(f"{len(group['runs'])} runs of one recipe ({members}): final accuracy mean {group['mean_accuracy']:.2%},"
              f" sd {100 * group['sd_accuracy']:.2f} points, range {group['min_accuracy']:.2%}"
              f" to {group['max_accuracy']:.2%}")
    print(f"wrote {out} (test accuracy of {len(rows)} runs)")
    return 0


def ascii_image(image: torch.Tensor) -> str:
    """A 28x28 uint8 image as 28 lines of characters, dark to bright."""
    ramp = " .:-=+*#%@"
    return "\n".join("".join(ramp[int(v) * (len(ramp) - 1) // 255] * 2 for v in row) for row in image)


RUN_FILES = ("config.json", "metrics.csv", "last.state.pt")  # beside *.safetensors: what only a run folder holds



def holds_run_files(folder: Path) -> bool:
    return any((folder / name).exists() for name in RUN_FILES) or any(folder.glob("*.safetensors"))


def split_run_and_files(inputs: list[str]) -> tuple[str | None, list[str]]:
    """The first input is a run if it is a folder with config.json or a .safetensors file. One that only looks
    like a run (missing and not an image name, under a runs/ folder, or a folder with run files but no
    config.json) is an error: predicting with the shipped model instead would hide the typo."""
    if not inputs:
        return None, []
    first = Path(inputs[0])
    if first.suffix == ".safetensors" or (first.is_dir() and (first / "config.json").is_file()):
        return inputs[0], inputs[1:]
    under_runs = "runs" in first.parts
    if first.is_dir() and (holds_run_files(first) or under_runs):
        raise RunError(f"{first} is not a usable run folder: it has no config.json"
                       + (" (but holds run files)" if holds_run_files(first) else ""))
    if not first.exists() and not first.is_symlink() and (under_runs or first.suffix.lower() not in image_suffixes()):
        raise RunError(f"{first} does not exist (expected a run folder, a .safetensors file or an image)")
    return None, list(inputs)


def cmd_predict(args: argparse.Namespace) -> int:
    from digitlab.predict import Predictor

    if args.top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {args.top_k}")
    run, files = split_run_and_files(args.inputs)
    if args.onnx:
        return predict_onnx(run, files, args)
    if args.test_index is None and not files:
        raise ConfigError("give image files or folders to predict, or --test-index I")
    if args.test_index is not None and args.save_preprocessed:
        raise ConfigError("--save-preprocessed is for image files; a test image is already 28x28: use --save")
    if args.test_index is not None and files:
        raise ConfigError("give either --test-index or image files, not both")
    paths = expand_inputs(files)  # every input checked before the model is loaded
    if run is None and args.test_index is None:  # the shipped model, on ONNX Runtime when it can: no torch import
        predictor = Predictor.from_shipped(threads=1)
    else:
        predictor = Predictor.from_run(run, args.checkpoint)
    if args.test_index is not None:
        return predict_test_image(predictor, args)
    return predict_files(predictor, paths, args)


def predict_onnx(run: str | None, files: list[str], args: argparse.Namespace) -> int:
    """`predict --onnx MODEL.onnx FILE...`: the same output, inference in onnxruntime."""
    from digitlab.extras import require
    from digitlab.predict import Predictor

    require("onnx", "onnxruntime", "predict --onnx")
    if run is not None:
        raise ConfigError(f"give either a run ({run}) or --onnx MODEL.onnx, not both")
    if args.test_index is not None:
        raise ConfigError("--test-index needs a run; with --onnx, give image files or folders")
    if not files:
        raise ConfigError("give image files or folders to predict with --onnx")
    paths = expand_inputs(files)
    return predict_files(Predictor.from_onnx(args.onnx), paths, args)


def cmd_export(args: argparse.Namespace) -> int:
    from digitlab.export import export_run

    result = export_run(args.run, args.format, args.output, args.checkpoint, args.check_images, args.data_dir,
                        dynamo=args.dynamo)
    print(f"wrote {result.path} ({result.how}, {result.size_bytes / 1e6:.1f} MB)")
    print(f"parity with PyTorch on {result.parity_images}: {result.parity}")
    return 0


def predict_test_image(predictor, args: argparse.Namespace) -> int:
    from digitlab.data import load_dataset

    ds = load_dataset(predictor.dataset, args.data_dir, progress=False)
    n = ds.test_images.shape[0]
    if not 0 <= args.test_index < n:
        raise ConfigError(f"--test-index must be in 0..{n - 1}, got {args.test_index}")
    image, label = ds.test_images[args.test_index], int(ds.test_labels[args.test_index])
    logits = predictor.logits(image[None])[0]
    pred = predictor.describe_logits(logits, args.top_k)
    if args.save:
        from PIL import Image

        Image.fromarray(image.numpy()).save(args.save)
    if args.json:
        print(json_line({"test_index": args.test_index, "true": label, "logits": logits.tolist(), **pred.to_dict()}))
        return 0
    print(ascii_image(image))
    print(f"test image {args.test_index}: true {label} ({ds.classes[label]})")
    print(f"{'class':<16}{'logit':>9}{'prob':>9}")
    for i, name in enumerate(ds.classes):
        marker = " <" if i == pred.label else ""
        print(f"{i} {name:<14}{float(logits[i]):>9.3f}{pred.probabilities[i]:>9.2%}{marker}")
    verdict = "right" if pred.label == label else "wrong"
    print(f"predicted {pred.label} ({pred.class_name}) with {pred.probability:.2%}: {verdict}")
    if args.save:
        print(f"saved {args.save}")
    return 0


def predict_files(predictor, paths: list[Path], args: argparse.Namespace) -> int:
    """One line per file in the given order, streamed chunk by chunk (Predictor.predict_files batches the model
    and spreads preprocessing over processes); an unreadable file is an error line, the rest still predicted."""
    from digitlab.predict import CHUNK

    save_dir = prepare_save_dir(args.save_preprocessed, paths) if args.save_preprocessed else None
    # Tiny batches of a small CNN: one intra-op thread is faster than several, which contend with the
    # preprocessing workers for the same cores (benchmarks/predict_folder.py). ONNX Runtime's model has its own
    # setting (from_shipped's threads); torch is only here if something already imported it.
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch else None
    if torch:
        torch.set_num_threads(1)
    try:
        failed, used_names = 0, set()
        for n, result in enumerate(predictor.predict_files(paths, top_k=args.top_k), 1):
            failed += print_file_result(result, save_dir, used_names, args)
            if n % CHUNK == 0:
                sys.stdout.flush()  # progress shows when the output is piped, too
    finally:
        if torch:
            torch.set_num_threads(threads)  # process-wide: callers of main() in the same process keep theirs
    return 1 if failed else 0


def json_line(record: dict) -> str:
    """Strict JSON (no bare NaN or Infinity, which JSON parsers refuse): the Predictor refuses non-finite
    outputs first, so reaching the error here means a number slipped past that check."""
    try:
        return json.dumps(record, allow_nan=False)
    except ValueError:
        raise DigitlabError("refusing to print NaN or infinity as JSON (the model's output is not finite)") from None


def print_file_result(result, save_dir: Path | None, used_names: set[str], args: argparse.Namespace) -> int:
    """Print one FileResult the way `digitlab predict` always has; 1 if it is an error, else 0."""
    path, pred, error = result.path, result.prediction, result.error
    if error is not None:
        print(json.dumps({"file": str(path), "error": error}) if args.json else f"{path}: error: {error}",
              file=sys.stdout if args.json else sys.stderr)
        return 1
    saved = save_preprocessed(result.image, save_dir, path.stem, used_names) if save_dir else None
    if args.json:
        extra = {"preprocessed": str(saved)} if saved else {}
        print(json_line({"file": str(path), **pred.to_dict(), **extra}))
    else:
        top = ", ".join(f"{i}: {p:.1%}" for i, p in pred.top_k)
        print(f"{path}: {pred.label} ({pred.probability:.1%})  top {args.top_k}: {top}"
              + (f"  saved {saved}" if saved else ""))
    return 0


def prepare_save_dir(folder: str, inputs: list[Path]) -> Path:
    """Create the --save-preprocessed folder; refuse one that holds input images (they would be overwritten)."""
    out = Path(folder)
    if out.exists() and any(p.parent.resolve() == out.resolve() for p in inputs):
        raise ConfigError(f"--save-preprocessed {out} holds input images; choose another folder so none is "
                          "overwritten")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--save-preprocessed {out}: cannot create the folder ({e.strerror})") from None
    return out


def save_preprocessed(image, folder: Path, stem: str, used: set[str]) -> Path:
    """Write a (28, 28) uint8 image as folder/<stem>.png, or <stem>-2.png, -3... if that name was used in this
    run (a.png and a.jpg) or the file exists: an existing file is never overwritten (created exclusively)."""
    import numpy as np
    from PIL import Image

    n = 1
    while True:
        name = stem if n == 1 else f"{stem}-{n}"
        n += 1
        if name in used:
            continue
        path = folder / f"{name}.png"
        try:
            with open(path, "xb") as f:
                try:
                    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(f, format="PNG")
                except OSError:
                    path.unlink(missing_ok=True)  # ours: created above, so no one else's file is removed
                    raise
        except FileExistsError:
            continue
        except OSError as e:
            raise DigitlabError(f"cannot write {path} ({e.strerror or e})") from None
        used.add(name)
        return path


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Image files as given, a folder's image files (by name ending: digitlab.formats), sorted; missing paths,
    folders without images, files named as a format digitlab does not read (.eps, .ico, ...) and anything
    that is not a regular file (a FIFO would block the read forever) are errors. A file's bytes decide in the
    end: one in another format under an allowed name is refused when it is read."""
    out: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            suffixes = image_suffixes()
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in suffixes and p.is_file())
            if not found:
                raise ConfigError(f"{path} holds no image files (.png, .jpg, ...) to predict")
            out += found
        elif not path.exists():
            raise ConfigError(f"{path} does not exist")
        elif not path.is_file():
            raise ConfigError(f"{path} is not a regular file (a FIFO, socket or device); give image files")
        elif path.suffix.lower() in refused_suffixes():
            raise ConfigError(f"{path}: {path.suffix.lower()} files are not read; digitlab reads {FORMATS_TEXT}")
        else:
            out.append(path)
    return out


def cmd_serve(args: argparse.Namespace) -> int:
    """ONNX Runtime answers one image 3-8x faster than eager PyTorch (docs/benchmarks.md), so it serves by
    default; each worker process exports the model in memory and checks it against PyTorch when it starts."""
    from digitlab.extras import require

    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be in 1..65535, got {args.port}")
    if args.threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {args.threads}")
    if not 0 < args.deadline < float("inf"):
        raise ConfigError(f"--deadline must be a positive number of seconds, got {args.deadline}")
    # fastapi_offline: Swagger UI's files for /docs; httptools: the HTTP parser the connection guards build on
    for module in ("fastapi", "uvicorn", "fastapi_offline", "httptools", "prometheus_client"):
        require("web", module, "digitlab serve")
    if args.runtime == "onnx":  # before loading anything
        for module in ("onnx", "onnxruntime"):
            require("onnx", module, "serving with --runtime onnx (the default; --runtime torch needs no extra)")
    from digitlab.serve import Limits, ModelSpec, PoolSettings, check_can_listen, run_server, start_pool
    from digitlab.serve.http_policy import HttpPolicy, check_host, check_origin, default_allowed_hosts
    from digitlab.serve.pool import default_workers

    hosts = tuple(check_host(h) for h in args.allowed_host) if args.allowed_host else default_allowed_hosts(args.host)
    policy = HttpPolicy(allowed_hosts=hosts, cors_origins=tuple(check_origin(o) for o in args.cors_origin or ()))
    workers = default_workers() if args.workers is None else args.workers
    settings = PoolSettings(workers=workers, max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms,
                            queue_size=args.queue_size, memory_mb=args.worker_memory_mb)
    settings.check()
    limits = Limits(inference_timeout_s=args.deadline)
    check_can_listen(args.host, args.port)  # before the workers spend seconds loading the model
    pool = start_pool(ModelSpec(args.run, args.checkpoint, args.runtime, args.threads), limits, settings)
    info = pool.model_info
    host = f"[{args.host}]" if ":" in args.host else args.host
    where = f"{settings.workers} worker processes" if settings.workers else "this process"
    print(f"digitlab: serving {info['name']} ({info['dataset']}, {info['source']}, {info['runtime']}) on "
          f"http://{host}:{args.port} from {where} (Ctrl+C to stop)", flush=True)
    if args.host in ("0.0.0.0", "::") and not args.allowed_host:  # reachable by names the server cannot know
        print(f"digitlab: answering Host {', '.join(hosts)} only; add the names clients use with --allowed-host",
              flush=True)
    run_server(host=args.host, port=args.port, threads=args.threads, limits=limits, pool=pool, policy=policy)
    stats = pool.stats
    print(f"digitlab: served {stats.completed:,} requests in {stats.model_calls:,} model calls (largest batch "
          f"{stats.largest_batch}); {stats.rejected:,} refused as busy, {stats.timeouts:,} past the deadline, "
          f"{stats.restarts:,} workers restarted", file=sys.stderr, flush=True)
    return 0


MAX_EXPLAIN_IMAGES = 100  # rows of one explain PNG; more would be a figure no one can read


def cmd_explain(args: argparse.Namespace) -> int:
    from digitlab.explain import Explainer

    run, files = split_run_and_files(args.inputs)
    if args.layers and args.embedding:
        raise ConfigError("give either --layers or --embedding, not both")
    if args.embedding:
        if files or args.test_index is not None:
            raise ConfigError("--embedding maps the run's test set; give no image files or --test-index")
        return explain_embedding(Explainer.from_run(run, args.checkpoint), args)
    if args.test_index is None and not files:
        raise ConfigError("give image files or folders to explain, or --test-index N...")
    if args.test_index is not None and files:
        raise ConfigError("give either --test-index or image files, not both")
    paths = expand_inputs(files)  # every input checked before the model is loaded
    count = len(paths) + len(args.test_index or [])
    if count > MAX_EXPLAIN_IMAGES:
        raise ConfigError(f"explain takes at most {MAX_EXPLAIN_IMAGES} images at a time, got {count}")
    if args.layers and count != 1:
        raise ConfigError(f"--layers shows one input; give one image or one --test-index, not {count}")
    explainer = Explainer.from_run(run, args.checkpoint)
    explainer.check_method(args.method)  # before any image is read: gradcam on an MLP, say, fails at once
    explainer.check_target(args.target)
    images, originals, names, truths = explain_inputs(explainer, paths, args)
    if args.layers:
        return explain_layers(explainer, images[0], names[0], args)
    explanations = explainer.explain(np.stack(images), args.method, args.target)
    if args.json:
        items = [{"input": name, **({"true": t} if t is not None else {}), **e.to_dict()}
                 for name, t, e in zip(names, truths, explanations)]
        print(json.dumps({"model": explainer.name, "dataset": explainer.dataset, "method": args.method,
                          "explanations": items}, allow_nan=False))
    else:
        for name, e in zip(names, explanations):
            why = ", ".join(f"{e.classes[t]} {e.probabilities[t]:.1%}" for t in e.targets)
            print(f"{name}: predicted {e.classes[e.label]} ({why})")
    if args.output or not args.json:
        from digitlab.explain import figures

        rows = [(o, e, n) for o, e, n in zip(originals, explanations, names)]
        path = figures.save(figures.attribution_figure(rows, args.method), args.output or "explain.png")
        print(f"wrote {path}", file=sys.stderr if args.json else sys.stdout)
    return 0


def explain_inputs(explainer, paths: list[Path], args: argparse.Namespace):
    """The 28x28 images to explain (through digitlab.preprocess, as `predict` does), the inputs as given (for
    the figure), their names, and their true labels where known (test images)."""
    from digitlab.predict import Predictor
    from digitlab.preprocess import load_image

    if args.test_index is not None:
        from digitlab.data import load_dataset

        ds = load_dataset(explainer.dataset, args.data_dir, progress=False)
        n = ds.test_images.shape[0]
        for i in args.test_index:
            if not 0 <= i < n:
                raise ConfigError(f"--test-index must be in 0..{n - 1}, got {i}")
        images = [ds.test_images[i].numpy() for i in args.test_index]
        truths = [int(ds.test_labels[i]) for i in args.test_index]
        names = [f"test #{i} (true {ds.classes[t]})" for i, t in zip(args.test_index, truths)]
        return images, [None] * len(images), names, truths
    images = [Predictor.to_input(p) for p in paths]
    originals = [np.asarray(load_image(p).convert("RGB")) for p in paths]
    return images, originals, [str(p) for p in paths], [None] * len(paths)


def explain_layers(explainer, image: np.ndarray, name: str, args: argparse.Namespace) -> int:
    from digitlab.explain.activations import layer_activations

    layers = layer_activations(explainer, image)
    probs = explainer.probabilities(image[None])[0]
    label = int(probs.argmax())
    if args.json:
        print(json.dumps({"model": explainer.name, "input": name, "label": label,
                          "probabilities": [round(float(p), 6) for p in probs],
                          "layers": [layer.to_dict() for layer in layers]}, allow_nan=False))
    else:
        for layer in layers:
            print(f"{layer.name:<16}{layer.type:<12}{str(tuple(layer.shape)):<16}")
    if args.output or not args.json:
        from digitlab.explain import figures

        title = f"{explainer.name}: {name}, predicted {explainer.classes[label]} ({probs[label]:.1%})"
        path = figures.save(figures.layers_figure(layers, image, title), args.output or "layers.png", tight=True)
        print(f"wrote {path}", file=sys.stderr if args.json else sys.stdout)
    return 0


def explain_embedding(explainer, args: argparse.Namespace) -> int:
    from digitlab.data import load_dataset
    from digitlab.explain.embedding import embed

    ds = load_dataset(explainer.dataset, args.data_dir, progress=False)
    emb = embed(explainer, ds.test_images.numpy(), ds.test_labels.numpy(), args.limit)
    wrong = int((emb.labels != emb.predictions).sum())
    out = sys.stderr if args.json else sys.stdout
    print(f"{len(emb.labels)} {explainer.dataset} test images, {wrong} misclassified; features "
          f"{emb.seconds['features']:.1f} s, PCA {emb.seconds['pca']:.1f} s, t-SNE {emb.seconds['tsne']:.1f} s",
          file=out)
    if args.json:
        print(json.dumps({"model": explainer.name, "dataset": explainer.dataset, **emb.to_dict(explainer.classes)},
                         allow_nan=False))
    if args.output or not args.json:
        from digitlab.explain import figures

        title = (f"{explainer.name}: penultimate-layer features of {len(emb.labels)} {explainer.dataset} test "
                 f"images (t-SNE), {wrong} misclassified (true→predicted)")
        fig = figures.embedding_figure(emb.points, emb.labels, emb.predictions, explainer.classes, title)
        path = figures.save(fig, args.output or "embedding.png", tight=True)
        print(f"wrote {path}", file=out)
    return 0
