"""digitlab's web app: a REST API and a drawing page around one loaded Predictor (needs the `web` extra).

    from digitlab.predict import Predictor
    from digitlab.serve import create_app, run_server
    app = create_app(Predictor.from_run("runs/<run>"))       # any ASGI server, or:
    run_server(Predictor.from_run(), port=8000)               # uvicorn on http://127.0.0.1:8000
    run_server(Predictor.from_run(runtime="onnx"))            # the same model in ONNX Runtime
"""
from digitlab.serve.app import create_app
from digitlab.serve.limits import Limits
from digitlab.serve.server import check_can_listen, run_server

__all__ = ["create_app", "Limits", "run_server", "check_can_listen"]
