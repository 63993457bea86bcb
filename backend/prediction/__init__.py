"""Batch predictions: the predictor, and one module per kind of control it answers."""
