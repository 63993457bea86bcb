"""The HTTP service: the FastAPI app, its command line and gunicorn settings, metrics, start-up checks."""
