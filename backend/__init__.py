"""Label Studio ML backend for Ultralytics YOLO and Segment Anything."""

__version__ = "0.1.0"
