"""Label Studio regions for the controls that YOLO pose, OBB, classification and tracking models answer:
one module per control kind, each a pure function from the model's output (pixels) to regions;
`backend.controls.tasks.task_regions` is the one place the batch predictor calls for them."""
