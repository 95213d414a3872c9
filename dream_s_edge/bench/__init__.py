"""`dream-s-edge bench`: autoregressive vs speculative decoding, side by side, on a prompts file.

`backends.py` holds the backend registry ("torch" built in; other runtimes register theirs) and
`run.py` the run, the JSON report and the plot; `ablate.py` runs the same bench once per draft
(`--ablate`) into one table.
"""

from dream_s_edge.bench.backends import BACKENDS, BenchBackend, make_backend, register_backend
from dream_s_edge.bench.run import BenchConfig, plot_bench, read_prompts, run_bench

__all__ = ["BACKENDS", "BenchBackend", "BenchConfig", "make_backend", "plot_bench", "read_prompts",
           "register_backend", "run_bench"]
