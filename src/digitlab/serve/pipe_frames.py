"""Reading a worker's results pipe on the event loop without blocking: FrameReader, for ProcessPool."""
from __future__ import annotations

import os
import pickle
import struct


class FrameReader:
    """Messages from a non-blocking pipe written by multiprocessing's Connection.send: a 4-byte big-endian
    length (-1: an 8-byte one follows), then the pickle. The event loop reads what is there and keeps partial
    frames: Connection.recv would block on one (or fail, where uvloop made the pipe non-blocking)."""

    def __init__(self, fd: int):
        self.fd = fd
        self.buffer = bytearray()
        os.set_blocking(fd, False)

    def read(self) -> tuple[list, bool]:
        """Every complete message available now, and whether the writer has closed its end."""
        closed = False
        while True:
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                closed = True
                break
            self.buffer += chunk
        return list(self._frames()), closed

    def _frames(self):
        while len(self.buffer) >= 4:
            (size,) = struct.unpack("!i", self.buffer[:4])
            start = 4
            if size == -1:
                if len(self.buffer) < 12:
                    return
                (size,) = struct.unpack("!Q", self.buffer[4:12])
                start = 12
            if len(self.buffer) < start + size:
                return
            payload = bytes(self.buffer[start:start + size])
            del self.buffer[:start + size]
            yield pickle.loads(payload)
