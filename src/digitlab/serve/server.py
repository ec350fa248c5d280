"""Run the app under uvicorn: `digitlab serve [RUN]` calls run_server(predictor, host, port).

uvicorn answers 503 beyond `limit_concurrency` open requests and closes idle keep-alive connections after a few
seconds, so a flood of clients cannot pile up work or sockets; the app's own Limits bound each request.
"""
from __future__ import annotations

import socket

import torch

from digitlab.errors import DigitlabError
from digitlab.predict import Predictor
from digitlab.serve.app import create_app
from digitlab.serve.limits import Limits

LIMIT_CONCURRENCY = 64  # open connections + requests at once; beyond it uvicorn answers 503
TIMEOUT_KEEP_ALIVE_S = 5  # idle keep-alive connections are closed after this many seconds


def check_can_listen(host: str, port: int) -> None:
    """Fail early, in one line, if host:port cannot be bound (taken, or not an address of this machine)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does, so TIME_WAIT is no obstacle
        try:
            s.bind((host, port))
        except OSError as e:
            raise DigitlabError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def run_server(predictor: Predictor, host: str = "127.0.0.1", port: int = 8000, threads: int = 1,
               limits: Limits = Limits(), log_level: str = "info") -> None:
    """Serve `predictor` until interrupted; torch uses `threads` CPU threads per inference (an ONNX Runtime
    predictor was given its own when created: Predictor.from_run(..., runtime="onnx", threads=...))."""
    import uvicorn

    torch.set_num_threads(max(1, threads))
    app = create_app(predictor, limits)
    uvicorn.run(app, host=host, port=port, log_level=log_level, limit_concurrency=LIMIT_CONCURRENCY,
                timeout_keep_alive=TIMEOUT_KEEP_ALIVE_S, timeout_graceful_shutdown=5, server_header=False)
