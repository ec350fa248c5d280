"""`digitlab serve`: check the flags and the optional dependencies, start the worker pool and the server."""
from __future__ import annotations

import argparse
import sys

from digitlab.errors import ConfigError


def cmd_serve(args: argparse.Namespace) -> int:
    """ONNX Runtime answers one image 3-8x faster than eager PyTorch (docs/benchmarks.md), so it serves by
    default; each worker process exports the model in memory and checks it against PyTorch when it starts. An
    .onnx file from `digitlab export` is served as it is (ONNX Runtime only), vetted once by start_pool."""
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
    from digitlab.serve import (Limits, ModelSpec, PoolSettings, ServeSettings, check_can_listen, run_server,
                                start_pool)
    from digitlab.serve.http_policy import HttpPolicy, check_host, check_origin, default_allowed_hosts
    from digitlab.serve.pool_settings import default_workers

    hosts = tuple(check_host(h) for h in args.allowed_host) if args.allowed_host else default_allowed_hosts(args.host)
    policy = HttpPolicy(allowed_hosts=hosts, cors_origins=tuple(check_origin(o) for o in args.cors_origin or ()))
    workers = default_workers() if args.workers is None else args.workers
    pool_settings = PoolSettings(workers=workers, max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms,
                                 queue_size=args.queue_size, memory_mb=args.worker_memory_mb,
                                 explain_queue_size=args.explain_queue_size, explain_workers=args.explain_workers)
    settings = ServeSettings(model=ModelSpec(args.run, args.checkpoint, args.runtime, args.threads),
                             pool=pool_settings, limits=Limits(inference_timeout_s=args.deadline), http=policy)
    settings.check()
    check_can_listen(args.host, args.port)  # before the workers spend seconds loading the model
    pool = start_pool(settings)
    info = pool.model_info
    host = f"[{args.host}]" if ":" in args.host else args.host
    where = f"{settings.pool.workers} worker processes" if settings.pool.workers else "this process"
    print(f"digitlab: serving {info['name']} ({info['dataset']}, {info['source']}, {info['runtime']}) on "
          f"http://{host}:{args.port} from {where} (Ctrl+C to stop)", flush=True)
    if args.host in ("0.0.0.0", "::") and not args.allowed_host:  # reachable by names the server cannot know
        print(f"digitlab: answering Host {', '.join(hosts)} only; add the names clients use with --allowed-host",
              flush=True)
    run_server(settings, host=args.host, port=args.port, pool=pool)
    stats = pool.stats
    print(f"digitlab: served {stats.completed:,} requests in {stats.model_calls:,} model calls (largest batch "
          f"{stats.largest_batch}); {stats.rejected:,} refused as busy, {stats.timeouts:,} past the deadline, "
          f"{stats.restarts:,} workers restarted", file=sys.stderr, flush=True)
    return 0
