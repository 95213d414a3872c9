"""dream-s-edge runtime: torch-free speculative tree decoding over numpy, onnxruntime and TensorRT."""
