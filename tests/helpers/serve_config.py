"""The Serve application's args as the local stack deploys them (the chart's Serve config)."""

from __future__ import annotations

from services.local.ray_serve import load_serve_config
from services.serve.app import AppArgs


def serve_app_args() -> AppArgs:
    (app,) = load_serve_config()["applications"]
    return AppArgs.model_validate(app["args"])
