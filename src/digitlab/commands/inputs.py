"""The inputs of `digitlab predict` and `digitlab explain`: which is a run, which are image files."""
from __future__ import annotations

from pathlib import Path

from digitlab.errors import ConfigError, RunError
from digitlab.formats import FORMATS_TEXT, image_suffixes, refused_suffixes


RUN_FILES = ("config.json", "metrics.csv", "last.state.pt")  # beside *.safetensors: what only a run folder holds


def holds_run_files(folder: Path) -> bool:
    return any((folder / name).exists() for name in RUN_FILES) or any(folder.glob("*.safetensors"))


def split_run_and_files(inputs: list[str]) -> tuple[str | None, list[str]]:
    """The first input is a run if it is a folder with config.json, a .safetensors file or an .onnx file from
    `digitlab export`. One that only looks like a run (missing and not an image name, under a runs/ folder, or a
    folder with run files but no config.json) is an error: predicting with the shipped model instead would hide
    the typo."""
    if not inputs:
        return None, []
    first = Path(inputs[0])
    if first.suffix in (".safetensors", ".onnx") or (first.is_dir() and (first / "config.json").is_file()):
        return inputs[0], inputs[1:]
    under_runs = "runs" in first.parts
    if first.is_dir() and (holds_run_files(first) or under_runs):
        raise RunError(f"{first} is not a usable run folder: it has no config.json"
                       + (" (but holds run files)" if holds_run_files(first) else ""))
    if not first.exists() and not first.is_symlink() and (under_runs or first.suffix.lower() not in image_suffixes()):
        raise RunError(f"{first} does not exist (expected a run folder, a .safetensors file or an image)")
    return None, list(inputs)


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
