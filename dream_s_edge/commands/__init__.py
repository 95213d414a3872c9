"""The `dream-s-edge` subcommands, one module per group; `dream_s_edge/cli.py` assembles them."""
