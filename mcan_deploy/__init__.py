"""mcan-deploy: train, export and deploy the Multiblock Channel Attention Network (MCAN).

Importing the package is light: torch is the only heavy import, and only when a submodule that
needs it is imported. Optional back-ends (triton, onnx, onnxruntime, openvino, nncf, matplotlib) are
imported inside the functions that use them; openvino and nncf through ``telemetry``, which keeps
their usage telemetry off.
"""

__version__ = "0.1.0"
