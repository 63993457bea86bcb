"""Model adapters (YOLO, SAM) and the per-process model cache."""
