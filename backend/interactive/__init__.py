"""Interactive segmentation: SAM prompts from Label Studio's context and the regions answered, on images and video."""
