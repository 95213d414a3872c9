"""dream-s-edge export: ONNX graphs, TensorRT engines and the artifact manifest."""
