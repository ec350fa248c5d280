"""digitlab's web app: a REST API and a drawing page around one loaded Predictor (needs the `web` extra).

    from digitlab.predict import Predictor
    from digitlab.serve import ModelSpec, PoolSettings, ServeSettings, create_app, run_server
    app = create_app(Predictor.from_run("runs/<run>"))       # any ASGI server, or:
    run_server(predictor=Predictor.from_run(), port=8000)     # uvicorn on http://127.0.0.1:8000, threads here
    run_server(ServeSettings(model=ModelSpec("runs/<run>"), pool=PoolSettings(workers=2)))  # worker processes

ServeSettings (serve/settings.py) holds every setting of serving, in sections: model, pool, limits, http,
connections.
"""
from digitlab.serve.app import create_app
from digitlab.serve.limits import Limits
from digitlab.serve.inline_pool import InlinePool
from digitlab.serve.pool import ProcessPool
from digitlab.serve.pool_settings import PoolSettings
from digitlab.serve.server import check_can_listen, run_server, start_pool
from digitlab.serve.settings import ConnectionLimits, ServeSettings
from digitlab.serve.worker import ModelSpec

__all__ = ["create_app", "Limits", "run_server", "start_pool", "check_can_listen", "ModelSpec", "PoolSettings",
           "ProcessPool", "InlinePool", "ServeSettings", "ConnectionLimits"]
