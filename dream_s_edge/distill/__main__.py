"""`python -m dream_s_edge.distill ARGS` = `dream-s-edge train ARGS`; the form torchrun launches:

    torchrun --nproc_per_node 2 -m dream_s_edge.distill --data DATA --out RUN
"""

import sys

from dream_s_edge.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
