"""Export of trained models to deployment formats (ONNX)."""
