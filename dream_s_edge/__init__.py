"""dream-s-edge, PyTorch side: target adapters, the DREAM draft, distillation and the CLI."""
