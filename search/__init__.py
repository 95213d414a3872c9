"""dream-s-edge search: the DREAM-S supernet, latency tables and the hardware-aware search."""
