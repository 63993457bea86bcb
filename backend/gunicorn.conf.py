"""gunicorn's configuration file (`gunicorn -c backend/gunicorn.conf.py backend._wsgi:app`).

gunicorn executes this file by path; the settings and hooks are `backend.serving.gunicorn_conf`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.serving.gunicorn_conf import *  # noqa: E402,F403
