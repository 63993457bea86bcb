"""Dataset tools: Label Studio exports to COCO / YOLO, folder auto-annotation, demo models."""
