"""Inference engines a run can be exported to and served from, behind the same `Predictor`."""
