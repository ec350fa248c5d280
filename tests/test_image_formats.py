"""One list of image formats (digitlab.formats) for the CLI, the Python API and the server.

ICO, TGA, PCX, SGI and PPM files of a real digit, and an EPS file, must be refused by `digitlab predict` and by
Predictor.predict (path, bytes, file object) with one line naming the formats digitlab reads; the six formats of
the list must still be read. EPS is the dangerous one: Pillow decodes it by running Ghostscript. A fake `gs` on
PATH records every call in a file, and a control shows Pillow, left to itself, really does run it.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import EpsImagePlugin, Image

from digitlab.cli import main
from digitlab.errors import ImageError
from digitlab.formats import FORMATS_TEXT, IMAGE_FORMATS, image_suffixes
from digitlab.predict import Predictor
from helpers import REPO, run_cli

LABEL = 7  # MNIST test image 0
REFUSED = {"ICO": ".ico", "TGA": ".tga", "PCX": ".pcx", "SGI": ".sgi", "PPM": ".ppm", "EPS": ".eps"}
ALLOWED = {"PNG": ".png", "JPEG": ".jpg", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp"}
EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\n"
       b"newpath 5 5 moveto 20 20 lineto stroke showpage\n%%EOF\n")


def encode(image: Image.Image, fmt: str) -> bytes:
    if fmt == "EPS":
        return EPS
    buf = io.BytesIO()
    (image.convert("RGB") if fmt == "JPEG" else image).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def digit(mnist) -> Image.Image:
    """MNIST test image 0 (a 7) at 56x56, dark ink on white: big enough for every format's encoder."""
    return Image.fromarray(255 - mnist.test_images[0].numpy()).resize((56, 56))


@pytest.fixture(scope="module")
def files(digit, tmp_path_factory) -> dict[str, Path]:
    """The digit in every format here, each under its own format's name ending."""
    folder = tmp_path_factory.mktemp("formats")
    out = {}
    for fmt, suffix in {**REFUSED, **ALLOWED}.items():
        out[fmt] = folder / f"seven{suffix}"
        out[fmt].write_bytes(encode(digit, fmt))
    return out


@pytest.fixture(scope="module")
def shipped() -> Predictor:
    return Predictor.from_run()  # the model in the package: no training needed


@pytest.fixture
def fake_gs(tmp_path, monkeypatch) -> Path:
    """A `gs` first on PATH that appends its arguments to a log file; the log is where a run would show."""
    bin_dir, log = tmp_path / "fake-bin", tmp_path / "gs-calls.log"
    bin_dir.mkdir()
    gs = bin_dir / "gs"
    gs.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\n[ "$1" = "--version" ] && echo 10.0 && exit 0\nexit 1\n')
    gs.chmod(gs.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)  # Pillow caches whether gs exists: look again
    return log


@pytest.mark.quick
def test_the_files_are_what_they_claim(files):
    for fmt, path in files.items():
        with Image.open(path) as im:  # Pillow on its own opens every one of them
            assert im.format == fmt, (path, im.format)


@pytest.mark.quick
def test_control_pillow_alone_runs_ghostscript_on_eps(files, fake_gs):
    """What the other tests check would happen without the list: Pillow's EPS decoder runs `gs`."""
    with pytest.raises((OSError, subprocess.CalledProcessError)):  # the fake gs renders nothing
        with Image.open(files["EPS"]) as im:
            im.load()
    assert fake_gs.is_file() and "--version" in fake_gs.read_text(), "Pillow did not run the fake gs"


@pytest.mark.quick
def test_one_list_for_cli_api_and_server():
    from digitlab.serve.limits import UPLOAD_FORMATS

    assert UPLOAD_FORMATS is IMAGE_FORMATS
    assert set(IMAGE_FORMATS) == set(ALLOWED)
    suffixes = image_suffixes()  # what `digitlab predict FOLDER` picks
    assert set(ALLOWED.values()) | {".jpeg", ".png", ".tiff"} <= suffixes
    assert not suffixes & set(REFUSED.values())


@pytest.mark.quick
@pytest.mark.parametrize("fmt", REFUSED)
def test_predictor_refuses_the_format_from_path_bytes_and_file(shipped, files, fmt, fake_gs):
    path = files[fmt]
    for source in (path, str(path), path.read_bytes(), io.BytesIO(path.read_bytes())):
        with pytest.raises(ImageError, match="not an image in a format digitlab reads") as e:
            shipped.predict(source)
        assert FORMATS_TEXT in str(e.value) and "\n" not in str(e.value)
    assert not fake_gs.exists(), f"Ghostscript ran: {fake_gs.read_text()}"


@pytest.mark.quick
@pytest.mark.parametrize("fmt", ALLOWED)
def test_predictor_reads_the_allowed_formats(shipped, files, fmt):
    path = files[fmt]
    for source in (path, path.read_bytes(), io.BytesIO(path.read_bytes())):
        assert shipped.predict(source)[0].label == LABEL, (fmt, type(source))


@pytest.mark.quick
def test_server_header_check_refuses_them_with_415(files):
    from fastapi import HTTPException

    from digitlab.serve.limits import check_image_header

    for fmt in REFUSED:
        with pytest.raises(HTTPException) as e:
            check_image_header(files[fmt].read_bytes(), 4096)
        assert e.value.status_code == 415 and FORMATS_TEXT in e.value.detail, fmt
    for fmt in ALLOWED:
        check_image_header(files[fmt].read_bytes(), 4096)


#### The CLI


def cli_one_line(capsys, args: list[str], *fragments: str) -> str:
    """`digitlab ARGS` in this process: exit 1, nothing predicted, one stderr line holding `fragments`."""
    capsys.readouterr()
    assert main(args) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1, (out, err)
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


@pytest.mark.quick
@pytest.mark.parametrize("fmt", REFUSED)
def test_cli_refuses_a_named_file_before_predicting(files, fmt, capsys):
    """By its name, up front, like a missing file: `digitlab: error: ...` and nothing predicted."""
    err = cli_one_line(capsys, ["predict", str(files["PNG"]), str(files[fmt]), "--json"],
                       "digitlab: error: ", str(files[fmt]), FORMATS_TEXT)
    assert "Traceback" not in err


@pytest.mark.quick
@pytest.mark.parametrize("fmt", REFUSED)
def test_cli_refuses_the_bytes_under_an_allowed_name(files, fmt, tmp_path, capsys):
    """An ICO (or TGA, ..., EPS) renamed .png: the bytes decide, when the file is read; the line says why."""
    disguised = tmp_path / f"{fmt.lower()}-in-disguise.png"
    shutil.copy(files[fmt], disguised)
    err = cli_one_line(capsys, ["predict", str(disguised)], str(disguised), "not an image in a format digitlab reads",
                       FORMATS_TEXT)
    assert "Traceback" not in err


@pytest.mark.quick
def test_cli_folder_picks_only_the_allowed_formats(files, capsys):
    assert main(["predict", str(files["PNG"].parent), "--json"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = [json.loads(line) for line in out.splitlines()]
    assert sorted(Path(line["file"]).suffix for line in lines) == sorted(ALLOWED.values())
    assert all(line["label"] == LABEL for line in lines), lines


def test_cli_never_starts_ghostscript(files, tmp_path):
    """In a fresh process (Pillow's `gs` lookup not cached), EPS named .eps and EPS named .png: no `gs` call."""
    bin_dir, log = tmp_path / "fake-bin", tmp_path / "gs-calls.log"
    bin_dir.mkdir()
    gs = bin_dir / "gs"
    gs.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\n[ "$1" = "--version" ] && echo 10.0 && exit 0\nexit 1\n')
    gs.chmod(0o755)
    disguised = tmp_path / "eps.png"
    shutil.copy(files["EPS"], disguised)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    for target in (files["EPS"], disguised):
        done = run_cli("predict", str(target), env=env, timeout=120)
        assert done.returncode == 1 and done.stdout == "", done.stdout + done.stderr
        assert done.stderr.count("\n") == 1 and FORMATS_TEXT in done.stderr, done.stderr
    assert not log.exists(), f"Ghostscript ran: {log.read_text()}"
    control = subprocess.run([sys.executable, "-c", "import sys; from PIL import Image; "
                              "im = Image.open(sys.argv[1])\ntry: im.load()\nexcept Exception: pass", str(disguised)],
                             env={**os.environ, **env}, cwd=REPO, timeout=60, capture_output=True, text=True)
    assert log.is_file(), f"the control did not run the fake gs: {control.stderr}"
