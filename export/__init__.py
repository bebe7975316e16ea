"""ONNX export of DIFT's networks and the accelerated backends (installed as ``dift_fast.export``).

This package consumes dift_fast's public pieces (components, config); ``dift_fast`` itself never imports it.
The onnxruntime and tensorrt backends are registered through the ``dift_fast.backends`` entry-point group.
"""
