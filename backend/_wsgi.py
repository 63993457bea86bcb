"""Entry point: `label-studio-ml start backend --port 8003 [--with key=value ...]` runs this file.

    python backend/_wsgi.py --port 8003 --with model_score_threshold=0.3 device=cpu
    gunicorn 'backend._wsgi:app' -c backend/gunicorn.conf.py      # production (settings from env)

The command line itself is `backend.serving.cli`.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    # Run as a script, Python puts backend/ first on sys.path, where our module names could shadow
    # other packages; import the package from the repository root instead.
    script_dir = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != script_dir]
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.serving.cli import configure_logging, main  # noqa: E402
from backend.settings import Settings  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
else:
    # gunicorn / uvicorn import: settings come from the environment.
    _settings = Settings.load()
    configure_logging(_settings.log_level)
    from backend.serving.app import create_app as _create_app

    app = _create_app(_settings)
