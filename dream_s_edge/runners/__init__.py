"""PyTorch runners: the target adapters and the DREAM draft behind the runtime's runner interface."""
