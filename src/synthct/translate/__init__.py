"""Inference: ``translator`` (volumes -> synthetic volumes, cycle QA) and ``export`` (ONNX /
TorchScript with parity checks). Import the submodules; this package imports nothing heavy."""
