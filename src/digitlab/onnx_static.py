"""The static look at an .onnx file's bytes that comes before onnxruntime sees them (onnx_guard.vet), and that
export_run applies to what it writes: a walk over the protobuf wire format in pure Python, with no digitlab
import beyond its errors, so that both can use it (importing the `onnx` package instead costs about 1 s of CPU).

It refuses what no file `digitlab export` writes holds: more than MAX_NODES nodes (subgraphs included; exported
models have 12-30), operators outside the standard ONNX domain, model-local functions, sparse tensors, and
tensors whose data lives in other files (onnxruntime would read whatever path they name). It costs well under a
millisecond, AlexNet's 227 MB export included (large fields are skipped, not copied).
"""
from __future__ import annotations

from collections.abc import Iterator

from digitlab.errors import RunError

MAX_NODES = 1000  # nodes in the graph and its subgraphs; exported models have 12-30
MAX_DEPTH = 16  # nesting of subgraphs (a Loop's body inside an If's branch...)
EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
ONNX_DOMAINS = ("", "ai.onnx")  # the standard operator set: all `digitlab export` writes


class Malformed(Exception):
    """The bytes are not a protobuf message of the expected shape."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise Malformed
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def fields(buf: memoryview) -> Iterator[tuple[int, int | memoryview | None]]:
    """(field number, value) of one message: an int for varints, a memoryview of the bytes for length-delimited
    fields, None for fixed-size ones."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        value: int | memoryview | None = None
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value = buf[pos:pos + size]
            pos += size
        else:  # groups (3, 4) are not used by ONNX; 6 and 7 do not exist
            raise Malformed
        if pos > len(buf) or number == 0:
            raise Malformed
        yield number, value


class GraphCount:
    """Walks a graph and its subgraphs, counting nodes; raises Refused at the first thing no exported file holds."""

    def __init__(self) -> None:
        self.nodes = 0

    def graph(self, buf: memoryview, depth: int) -> None:
        """GraphProto: node = 1, initializer = 5, sparse_initializer = 15."""
        if depth > MAX_DEPTH:
            raise Refused(f"subgraphs nested more than {MAX_DEPTH} deep")
        for number, value in fields(buf):
            if number == 1 and isinstance(value, memoryview):
                self.node(value, depth)
            elif number == 5 and isinstance(value, memoryview):
                tensor(value)
            elif number == 15:
                raise Refused("sparse tensors (exported models have none)")

    def node(self, buf: memoryview, depth: int) -> None:
        """NodeProto: op_type = 4, domain = 7, attribute = 5."""
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise Refused(f"more than {MAX_NODES:,} nodes (models digitlab exports have at most a few dozen)")
        op, domain = "", ""
        for number, value in fields(buf):
            if number == 4 and isinstance(value, memoryview):
                op = bytes(value).decode(errors="replace")[:60]
            elif number == 7 and isinstance(value, memoryview):
                domain = bytes(value).decode(errors="replace")[:60]
            elif number == 5 and isinstance(value, memoryview):
                self.attribute(value, depth)
        if domain not in ONNX_DOMAINS:
            raise Refused(f"operator {op!r} of domain {domain!r}, outside the standard ONNX operators")

    def attribute(self, buf: memoryview, depth: int) -> None:
        """AttributeProto: t = 5, g = 6, tensors = 10, graphs = 11, sparse_tensor = 22, sparse_tensors = 23."""
        for number, value in fields(buf):
            if number in (6, 11) and isinstance(value, memoryview):
                self.graph(value, depth + 1)
            elif number in (5, 10) and isinstance(value, memoryview):
                tensor(value)
            elif number in (22, 23):
                raise Refused("sparse tensors (exported models have none)")


class Refused(Exception):
    """The static check's reason to refuse a well-formed file."""


def tensor(buf: memoryview) -> None:
    """TensorProto: external_data = 13, data_location = 14 (1: EXTERNAL)."""
    for number, value in fields(buf):
        if number == 13 or (number == 14 and value == EXTERNAL):
            raise Refused("a tensor whose data is in another file (exported models hold all their weights)")


def static_check(data: bytes, source: str) -> None:
    """Refuse (RunError, one line) a file that is not an ONNX protobuf, or holds what no exported file does.
    ModelProto: graph = 7, functions = 25. A second graph field would be merged into the first by protobuf, and
    could hide nodes from a count per field: it is refused as malformed."""
    count = GraphCount()
    try:
        graphs = 0
        for number, value in fields(memoryview(data)):
            if number == 7 and isinstance(value, memoryview):
                graphs += 1
                count.graph(value, 0)
            elif number == 25:
                raise Refused("model-local functions (exported models have none)")
        if graphs != 1:
            raise Malformed
    except Malformed:
        raise RunError(f"{source} is not a readable ONNX model (not an ONNX protobuf with one graph)") from None
    except Refused as e:
        raise RunError(f"refusing the model {source}: it holds {e}") from None
