"""The HTTP service (app.py is the only module that imports the web framework) and its API keys."""
