"""Pure data formats: Label Studio label configs and exports, region geometry, COCO / RLE and YOLO datasets.

No HTTP, no models, no Label Studio client: everything above (the backend, training, the tools) imports
this layer, and it imports none of them.
"""
