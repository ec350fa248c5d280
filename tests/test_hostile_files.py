"""Crafted hostile files posted as uploads, to the in-process app and to one real `digitlab serve`.

Each file must get a 4xx JSON error or a 200 with a valid prediction (of the right digit, where the file holds
one); never a 5xx, and the process keeps serving. The files: truncated PNG and JPEG; decompression bombs (headers
claiming huge sizes, and a real 10000x10000 1-bit PNG of 12 kB); images of 1x100000 and 4096x1 pixels; an empty
file; an animated GIF and a many-page TIFF (the first frame is read); CMYK JPEG and 16-bit PNG of real digits;
text, PDF, SVG, HTML and EPS sent as images; PNGs with a 1.9 MB text chunk or zlib bombs in zTXt and iCCP;
the largest image allowed (4096x4096), and a 4096x4096 32-bit float TIFF. Against the real server, its memory
(VmRSS from /proc/<pid>/status) is read before and after the corpus and after 200 more bomb attempts.
"""
from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from digitlab.data import load_dataset
from digitlab.serve import create_app

PREDICT = "/api/predict"
MAX_RSS_GROWTH_MB = 150
BOMB_ATTEMPTS = 200
TIMEOUT_S = 30
ANY_ERROR = (400, 413, 415, 422)


#### Building the files


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming width x height 1-bit pixels, with no pixel data at all."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")


def with_png_chunk(png: bytes, kind: bytes, data: bytes) -> bytes:
    """The PNG with one more chunk just before its first IDAT."""
    at = png.index(b"IDAT") - 4
    return png[:at] + png_chunk(kind, data) + png[at:]


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


def frames(first: Image.Image, count: int, seed: int = 0) -> list[Image.Image]:
    """The digit, then `count - 1` frames of noise the server must not read."""
    rng = np.random.default_rng(seed)
    noise = [Image.fromarray(rng.integers(0, 256, first.size[::-1], dtype=np.uint8)) for _ in range(count - 1)]
    return [first] + noise


def animated_gif(digit: Image.Image) -> bytes:
    big = digit.resize((112, 112))
    first, *rest = [f.convert("P") for f in frames(big, 6)]
    return encode(first, "GIF", save_all=True, append_images=rest, duration=50, loop=0)


def many_page_tiff(digit: Image.Image, pages: int = 500) -> bytes:
    first, *rest = frames(digit, pages)
    return encode(first, "TIFF", save_all=True, append_images=rest)


def tiff_with_ifd_loop(digit: Image.Image) -> bytes:
    """A two-page TIFF whose second page points back to the first: page 1, 2, 1, 2, ... for ever."""
    data = bytearray(many_page_tiff(digit, pages=2))
    assert data[:2] == b"II"
    first = struct.unpack_from("<I", data, 4)[0]
    second = struct.unpack_from("<I", data, first + 2 + 12 * struct.unpack_from("<H", data, first)[0])[0]
    count = struct.unpack_from("<H", data, second)[0]
    struct.pack_into("<I", data, second + 2 + 12 * count, first)
    return bytes(data)


def huge_jpeg_header(digit: Image.Image) -> bytes:
    """A real JPEG whose frame header (SOF0) is rewritten to claim 65500x65500 pixels."""
    data = bytearray(encode(digit.convert("RGB"), "JPEG", quality=90))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, 65500, 65500)
    return bytes(data)


def huge_gif_screen(digit: Image.Image) -> bytes:
    """A GIF whose logical screen claims 65535x65535 around one 28x28 frame."""
    data = bytearray(encode(digit.convert("P"), "GIF"))
    struct.pack_into("<HH", data, 6, 65535, 65535)
    return bytes(data)


def bmp_header_only(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info), 0, 0, 14 + len(info)) + info


def thin_line(width: int, height: int) -> bytes:
    """A black image with one white dot in the middle: a line too thin to hold a digit."""
    image = Image.new("L", (width, height), 0)
    image.putpixel((width // 2, height // 2), 255)
    return encode(image, "PNG")


def float_tiff_4096(digit: Image.Image) -> bytes:
    """The digit blown up to 4096x4096 as 32-bit floats (64 MiB of pixels), deflated to a few hundred kB."""
    big = digit.resize((4096, 4096), Image.NEAREST)
    pixels = Image.fromarray(np.asarray(big, dtype=np.float32), mode="F")
    return encode(pixels, "TIFF", compression="tiff_adobe_deflate")


def exif_orientation(digit: Image.Image, value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return encode(digit.convert("RGB").resize((56, 56)), "JPEG", quality=95, exif=exif.tobytes())


@dataclass
class Hostile:
    name: str
    build: Callable[[Image.Image], bytes]  # the digit (a 7, MNIST test image 0) -> the file's bytes
    content_type: str
    expect: tuple[int, ...]  # the acceptable statuses
    reads_digit: bool = False  # a 200 must then say 7


def zlib_bomb(size: int = 200_000_000) -> bytes:
    return zlib.compress(b"\0" * size, 9)


CORPUS = [
    Hostile("truncated PNG", lambda d: encode(d, "PNG")[:130], "image/png", (400,)),
    Hostile("truncated JPEG", lambda d: encode(d.resize((112, 112)), "JPEG")[:900], "image/jpeg", (400,)),
    Hostile("JPEG cut in its last scan", lambda d: encode(d.resize((112, 112)), "JPEG")[:-40], "image/jpeg", (400,)),
    Hostile("PNG header claiming 30000x30000", lambda d: png_header_only(30000, 30000), "image/png", (413,)),
    Hostile("PNG header claiming 4096x4096, no pixels", lambda d: png_header_only(4096, 4096), "image/png", (400,)),
    Hostile("real 10000x10000 1-bit PNG", lambda d: encode(Image.new("1", (10000, 10000)), "PNG"), "image/png",
            (413,)),
    Hostile("JPEG header claiming 65500x65500", huge_jpeg_header, "image/jpeg", (413,)),
    Hostile("GIF screen of 65535x65535", huge_gif_screen, "image/gif", (413,)),
    Hostile("BMP header claiming 50000x50000", lambda d: bmp_header_only(50000, 50000), "image/bmp", (413,)),
    Hostile("1x100000 image", lambda d: thin_line(1, 100000), "image/png", (413,)),
    Hostile("100000x1 image", lambda d: thin_line(100000, 1), "image/png", (413,)),
    Hostile("4096x1 image", lambda d: thin_line(4096, 1), "image/png", (200, 422)),
    Hostile("3x4096 image", lambda d: thin_line(3, 4096), "image/png", (200, 422)),
    Hostile("zero bytes", lambda d: b"", "image/png", (400,)),
    Hostile("animated GIF", animated_gif, "image/gif", (200,), reads_digit=True),
    Hostile("TIFF with 500 pages", many_page_tiff, "image/tiff", (200,), reads_digit=True),
    Hostile("TIFF whose pages loop", tiff_with_ifd_loop, "image/tiff", (200,), reads_digit=True),
    Hostile("CMYK JPEG", lambda d: encode(Image.fromarray(255 - np.asarray(d.resize((112, 112)))).convert("CMYK"),
                                          "JPEG", quality=92), "image/jpeg", (200,), reads_digit=True),
    Hostile("16-bit PNG", lambda d: encode(Image.fromarray(np.asarray(d, dtype=np.uint16) * 257), "PNG"),
            "image/png", (200,), reads_digit=True),
    Hostile("EXIF orientation 9 (invalid)", lambda d: exif_orientation(d, 9), "image/jpeg", (200,), reads_digit=True),
    Hostile("PNG sent as application/octet-stream", lambda d: encode(d, "PNG"), "application/octet-stream", (200,),
            reads_digit=True),
    Hostile("text sent as image/png", lambda d: b"hello, not an image\n" * 20, "image/png", (415,)),
    Hostile("PDF sent as image/jpeg", lambda d: b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n", "image/jpeg",
            (415,)),
    Hostile("SVG", lambda d: b'<svg xmlns="http://www.w3.org/2000/svg" width="28" height="28">'
                             b'<text x="5" y="20">7</text></svg>', "image/svg+xml", (415,)),
    Hostile("HTML", lambda d: b"<!doctype html><html><body><img src=x onerror=alert(1)>7</body></html>",
            "text/html", (415,)),
    Hostile("EPS (Pillow would run Ghostscript)", lambda d: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\n"
            b"newpath 5 5 moveto 20 20 lineto stroke showpage\n%%EOF\n", "image/png", (415,)),
    Hostile("PPM (a format outside the list)", lambda d: encode(d, "PPM"), "image/png", (415,)),
    Hostile("PNG with a 1.9 MB tEXt chunk", lambda d: with_png_chunk(encode(d, "PNG"), b"tEXt",
                                                                    b"Comment\0" + b"A" * 1_900_000),
            "image/png", (200,), reads_digit=True),
    Hostile("PNG with a zTXt zlib bomb", lambda d: with_png_chunk(encode(d, "PNG"), b"zTXt",
                                                                 b"Comment\0\0" + zlib_bomb()), "image/png",
            (200, 400), reads_digit=True),
    Hostile("PNG with an iCCP zlib bomb", lambda d: with_png_chunk(encode(d, "PNG"), b"iCCP",
                                                                  b"icc\0\0" + zlib_bomb()), "image/png",
            (200, 400), reads_digit=True),
    Hostile("PNG with a bad CRC", lambda d: encode(d, "PNG")[:29] + b"\0\0\0\0" + encode(d, "PNG")[33:], "image/png",
            ANY_ERROR),
    Hostile("largest allowed image, 4096x4096 1-bit", lambda d: encode(d.resize((4096, 4096)).convert("1"), "PNG"),
            "image/png", (200,), reads_digit=True),
    Hostile("4096x4096 32-bit float TIFF", float_tiff_4096, "image/tiff", (200,), reads_digit=True),
]
BOMBS = [h for h in CORPUS if h.expect == (413,)] + [h for h in CORPUS if "zlib bomb" in h.name]
LABEL = 7  # MNIST test image 0


@pytest.fixture(scope="module")
def corpus() -> dict[str, bytes]:
    digit = Image.fromarray(load_dataset("mnist", progress=False).test_images[0].numpy())
    return {h.name: h.build(digit) for h in CORPUS}


def check(h: Hostile, response) -> None:
    """The answer `h` must get: one of its statuses; a 4xx is JSON with a detail; a 200 a valid prediction."""
    assert response.status_code in h.expect, f"{h.name}: {response.status_code} {response.text[:300]}"
    body = response.json()
    if response.status_code >= 400:
        assert isinstance(body["detail"], str) and body["detail"] and "Traceback" not in response.text
        return
    probs = np.array(body["probabilities"])
    assert probs.shape == (10,) and abs(probs.sum() - 1) < 1e-4 and body["label"] == int(probs.argmax())
    assert np.array(body["preprocessed"]).shape == (28, 28)
    if h.reads_digit:
        assert body["label"] == LABEL, f"{h.name}: read as {body['label']} ({probs.round(3).tolist()})"


def post(client, h: Hostile, data: bytes):
    return client.post(PREDICT + "?preprocessed=true", files={"file": ("upload", data, h.content_type)})


#### The files are what they claim


def test_corpus_is_what_it_claims(corpus, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # read the bombs' headers here without Pillow's guard

    def header(name: str) -> Image.Image:
        return Image.open(io.BytesIO(corpus[name]))

    assert len(corpus["real 10000x10000 1-bit PNG"]) < 2 * 1024 * 1024
    assert header("real 10000x10000 1-bit PNG").size == (10000, 10000)
    assert header("JPEG header claiming 65500x65500").size == (65500, 65500)
    assert header("animated GIF").n_frames == 6
    assert header("TIFF with 500 pages").n_frames == 500
    assert header("CMYK JPEG").mode == "CMYK"
    assert header("16-bit PNG").mode.startswith("I")
    assert header("4096x4096 32-bit float TIFF").mode == "F"
    assert header("EPS (Pillow would run Ghostscript)").format == "EPS"  # Pillow itself would open it
    assert max(len(data) for data in corpus.values()) < 2 * 1024 * 1024  # all under the body limit


#### In process


@pytest.fixture(scope="module")
def client(predictor):
    with TestClient(create_app(predictor), raise_server_exceptions=False) as c:
        yield c


@pytest.mark.parametrize("h", CORPUS, ids=[h.name for h in CORPUS])
def test_hostile_file_in_process(client, corpus, h):
    check(h, post(client, h, corpus[h.name]))


BOUNDARY = "digitlab-hostile-boundary"


def multipart_body(filename: str | None, content_type: str, data: bytes) -> bytes:
    """One multipart/form-data part named "file", its filename (None: none) and Content-Type sent as given."""
    name = "" if filename is None else f'; filename="{filename}"'
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"{name}\r\n'
    if content_type:
        head += f"Content-Type: {content_type}\r\n"
    return head.encode() + b"\r\n" + data + f"\r\n--{BOUNDARY}--\r\n".encode()


@pytest.mark.parametrize("filename, content_type, status", [
    ("../../../etc/passwd", "image/png", 200), ("d\u00e9j\u00e0 \u2166.png", "image/png", 200),
    ("a\x00b.png", "image/png", 200), ("digit.png", "image/png; charset=\x7f", 200), ("digit.png", "", 200),
    ("x" * 10_000 + ".png", "image/png", 400),  # the multipart parser refuses a 10 kB part header
    (None, "image/png", 400),  # no filename: a text field, not a file
])
def test_odd_filenames_and_part_types(client, corpus, filename, content_type, status):
    """The name and type a client gives a part are never trusted: the bytes decide (or the parser refuses)."""
    data = corpus["PNG sent as application/octet-stream"]
    # The body is built by hand: an HTTP client library refuses some of these headers before sending them, and
    # what is tested is what the server does with whatever a hostile client sends.
    r = client.post(PREDICT, content=multipart_body(filename, content_type, data),
                    headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"})
    assert r.status_code == status, r.text[:300]
    assert r.json()["label"] == LABEL if status == 200 else r.json()["detail"]


def test_too_many_files_or_fields_is_400(client, corpus):
    png = corpus["PNG sent as application/octet-stream"]
    r = client.post(PREDICT, files=[("file", ("a.png", png, "image/png")), ("file", ("b.png", png, "image/png"))])
    assert r.status_code == 400 and r.json()["detail"], r.text
    r = client.post(PREDICT, data={f"f{i}": "x" for i in range(50)}, files={"file": ("a.png", png, "image/png")})
    assert r.status_code == 400 and r.json()["detail"], r.text


#### One real server: the corpus, 200 more bombs, and its memory


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process, in MB, from /proc/<pid>/status."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def test_real_server_survives_the_corpus_with_bounded_memory(live_server, corpus):
    pid = live_server.process.pid
    good = next(h for h in CORPUS if h.name == "PNG sent as application/octet-stream")
    rss = {}
    with httpx.Client(base_url=live_server.url, timeout=TIMEOUT_S) as http:
        for _ in range(5):  # warm up: the first predictions allocate what every later one reuses
            check(good, post(http, good, corpus[good.name]))
        rss["after warm-up"] = rss_mb(pid)
        for run in ("first", "second"):
            for h in CORPUS:
                check(h, post(http, h, corpus[h.name]))
            rss[f"after the {run} pass of the corpus"] = rss_mb(pid)
        for i in range(BOMB_ATTEMPTS):
            h = BOMBS[i % len(BOMBS)]
            check(h, post(http, h, corpus[h.name]))
        rss[f"after {BOMB_ATTEMPTS} more bomb attempts"] = rss_mb(pid)
        assert live_server.process.poll() is None
        assert http.get("/healthz").json() == {"status": "ok"}
        check(good, post(http, good, corpus[good.name]))  # still reads a digit right
    print(f"\nserver VmRSS (VmHWM), {len(CORPUS)} files per pass: "
          + "; ".join(f"{where} {now:.0f} MB ({peak:.0f})" for where, (now, peak) in rss.items()))
    base, first, second, bombs = (now for now, _ in rss.values())
    assert max(first, second, bombs) - base < MAX_RSS_GROWTH_MB, rss
    assert second - first < 50 and bombs - second < 20, rss  # no growth per pass: memory is reused, not leaked
    log = live_server.output()
    assert "Traceback" not in log and " 500 " not in log, log[-3000:]
