"""Deploying a split: ONNX export, manifest, runtime, Ray Serve and Triton."""
