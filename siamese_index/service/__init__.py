"""The HTTP service: create_app (app.py) over routes, schemas, settings, the lookup batcher and
the API keys (keys.py). Only the modules that need the web framework import it."""
