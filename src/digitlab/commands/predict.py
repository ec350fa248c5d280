"""`digitlab predict`: labels for image files, folders or a test image, as text or JSON lines."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from digitlab.commands.inputs import expand_inputs, split_run_and_files
from digitlab.errors import ConfigError, DigitlabError

if TYPE_CHECKING:  # torch is imported by the commands that use it: `digitlab predict` can run without it
    import torch


def cmd_predict(args: argparse.Namespace) -> int:
    from digitlab.predict import Predictor

    if args.top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {args.top_k}")
    run, files = split_run_and_files(args.inputs)
    if run is not None and run.lower().endswith(".onnx"):
        if args.onnx:  # every input is an image to predict, as --onnx always had it
            run, files = None, list(args.inputs)
        else:  # `predict model.onnx FILE...`: as --onnx model.onnx
            args.onnx, run = run, None
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


def ascii_image(image: torch.Tensor) -> str:
    """A 28x28 uint8 image as 28 lines of characters, dark to bright."""
    ramp = " .:-=+*#%@"
    return "\n".join("".join(ramp[int(v) * (len(ramp) - 1) // 255] * 2 for v in row) for row in image)


def predict_test_image(predictor, args: argparse.Namespace) -> int:
    from digitlab.data import load_dataset

    ds = load_dataset(predictor.dataset, args.data_dir, progress=False)
    n = ds.test_images.shape[0]
    if not 0 <= args.test_index < n:
        raise ConfigError(f"--test-index must be in 0..{n - 1}, got {args.test_index}")
    image, label = ds.test_images[args.test_index], int(ds.test_labels[args.test_index])
    logits = predictor.logits(image[None])[0]
    pred = predictor.prediction_from_logits(logits, args.top_k, image)
    if args.save:
        from PIL import Image

        Image.fromarray(image.numpy()).save(args.save)
    if args.json:
        print(json_line({"test_index": args.test_index, "true": label, "logits": logits.tolist(), **pred.to_dict(),
                         **calibration_fields(predictor)}))
        return 0
    print(ascii_image(image))
    print(f"test image {args.test_index}: true {label} ({ds.classes[label]})")
    print(f"{'class':<16}{'logit':>9}{'prob':>9}")
    for i, name in enumerate(ds.classes):
        marker = " <" if i == pred.top_k[0][0] else ""
        print(f"{i} {name:<14}{float(logits[i]):>9.3f}{pred.probabilities[i]:>9.2%}{marker}")
    if pred.label is None:
        print(f"predicted {refusal_text(pred)}")
    else:
        verdict = "right" if pred.label == label else "wrong"
        print(f"predicted {pred.label} ({pred.class_name}) with {pred.probability:.2%}: {verdict}")
    print(f"probabilities: softmax(logit / {predictor.temperature:.4g}), {predictor.info.calibration.note()}")
    if args.save:
        print(f"saved {args.save}")
    return 0


def predict_files(predictor, paths: list[Path], args: argparse.Namespace) -> int:
    """One line per file in the given order, streamed chunk by chunk (Predictor.predict_files batches the model
    and spreads preprocessing over processes); an unreadable file is an error line, the rest still predicted."""
    from digitlab.predict import CHUNK

    save_dir = prepare_save_dir(args.save_preprocessed, paths) if args.save_preprocessed else None
    note = uncalibrated_note(predictor)  # said once, after the first probabilities shown
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
            failed += print_file_result(result, save_dir, used_names, args, calibration_fields(predictor),
                                        predictor.classes)
            if note and result.prediction is not None:
                print(note, file=sys.stderr)
                note = None
            if n % CHUNK == 0:
                sys.stdout.flush()  # progress shows when the output is piped, too
    finally:
        if torch:
            torch.set_num_threads(threads)  # process-wide: callers of main() in the same process keep theirs
    return 1 if failed else 0


def uncalibrated_note(predictor) -> str | None:
    """The stderr line (stdout stays one line per file) saying a model's probabilities are raw softmax scores."""
    calibration = predictor.info.calibration
    return None if calibration.fitted else f"digitlab: note: probabilities are {calibration.note()}"


def calibration_fields(predictor) -> dict:
    """What each --json record says about its probabilities: calibrated or not, and the temperature."""
    calibration = predictor.info.calibration
    return {"calibrated": calibration.fitted, "temperature": calibration.temperature}


def json_line(record: dict) -> str:
    """Strict JSON (no bare NaN or Infinity, which JSON parsers refuse): the Predictor refuses non-finite
    outputs first, so reaching the error here means a number slipped past that check."""
    try:
        return json.dumps(record, allow_nan=False)
    except ValueError:
        raise DigitlabError("refusing to print NaN or infinity as JSON (the model's output is not finite)") from None


def print_file_result(result, save_dir: Path | None, used_names: set[str], args: argparse.Namespace,
                      calibration: dict, classes: tuple[str, ...] = ()) -> int:
    """Print one FileResult the way `digitlab predict` always has (--json: with `calibration`); 1 if it is an
    error, else 0. In text, a class whose name is not its number is shown with its name (5 'Sandal'). File names (and error texts, which may hold one) go through json_text in JSON and shown_text
    in text, so no name can forge a line of output or make a JSON line unreadable."""
    path, pred, error = result.path, result.prediction, result.error
    if error is not None:
        if args.json:
            print(json.dumps({"file": json_text(str(path)), "error": json_text(error)}))
        else:
            print(f"{shown_text(str(path))}: error: {shown_text(error)}", file=sys.stderr)
        return 1
    saved = save_preprocessed(result.image, save_dir, path.stem, used_names) if save_dir else None
    if args.json:
        extra = {"preprocessed": json_text(str(saved))} if saved else {}
        print(json_line({"file": json_text(str(path)), **pred.to_dict(), **calibration, **extra}))
    else:
        top = ", ".join(f"{named(i, classes)}: {p:.1%}" for i, p in pred.top_k)
        said = (f"{named(pred.label, classes)} ({pred.probability:.1%})" if pred.label is not None
                else refusal_text(pred))
        print(f"{shown_text(str(path))}: {said}  top {args.top_k}: {top}"
              + (f"  saved {shown_text(str(saved))}" if saved else ""))
    return 0


# Characters that would let a file name start a new line, rewrite the terminal (ANSI escapes) or reorder what is
# shown (bidirectional overrides): C0 and C1 controls, DEL, the Unicode line and paragraph separators, the
# bidi embeddings, overrides and isolates.
UNSHOWABLE = {*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A)}


def json_text(text: str) -> str:
    """`text` (a file name as Python decoded it) as valid UTF-8: bytes that were not UTF-8 (lone surrogates in
    Python's str, which many JSON readers refuse) become \\xNN escapes; json.dumps escapes the controls."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no decoding produced: keep it visible, escaped
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def shown_text(text: str) -> str:
    """`text` for a line of text output: json_text's escapes for undecodable bytes, and every UNSHOWABLE
    character (and the backslash, so an escape is never ambiguous) written as a Python escape (\\n, \\x1b,
    \\u202e)."""
    text = json_text(text.replace("\\", "\\\\"))
    return "".join(char if ord(char) not in UNSHOWABLE else char.encode("unicode_escape").decode("ascii")
                   for char in text)


def named(index: int, classes: tuple[str, ...]) -> str:
    """A class as text output shows it: its number, and its name where that is not the number (5 'Sandal')."""
    if index < len(classes) and classes[index] != str(index):
        return f"{index} {shown_text(repr(classes[index]))}"
    return str(index)


def refusal_text(pred) -> str:
    """What text mode says for a refused image: why, and the digit it would otherwise have been."""
    best, p = pred.top_k[0]
    return f"no digit: {pred.reason} (it would have been {best}, {p:.1%})"


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
