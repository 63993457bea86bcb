"""Label Studio ML backend for Ultralytics YOLO and Segment Anything."""

import os

__version__ = "0.1.0"

# Ultralytics pip-installs missing packages on demand (e.g. pi-heif when Pillow cannot identify a
# file); a server must never do that while answering a request.
os.environ.setdefault("YOLO_AUTOINSTALL", "false")
