"""Small composable export steps: a lazy `XFromY` callable and an eager `x_from_y` twin for each.

    OnnxFromTorch(module, example_args, path, inputs, outputs)() -> path   (torch.onnx.export)
    CleanedOnnx(path)()                                             -> path   (graphsurgeon cleanup)

Each lazy step takes a path or a callable returning one, so pipelines are built cheaply and run once
(the Polygraphy loader pattern). Names, order and dynamic axes come from `export/contract.py`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from export.contract import TensorSpec, dynamic_axes, names
from runtime.errors import ExportError

logger = logging.getLogger(__name__)
OPSET = 17


def _resolve(value):
    """A path, or the result of calling a loader that returns one."""
    return value() if callable(value) else value


class OnnxFromTorch:
    """Exports `module(*example_args)` to `path` with the contract's names and dynamic axes.

    Args:
        module: the torch module (eval mode, float32).
        example_args: example inputs, in contract order.
        path: where the .onnx goes.
        inputs, outputs: the contract's TensorSpecs.
    """

    def __init__(self, module: torch.nn.Module, example_args: tuple, path: Path,
                 inputs: list[TensorSpec], outputs: list[TensorSpec]):
        self.module, self.example_args, self.path = module, example_args, Path(path)
        self.inputs, self.outputs = inputs, outputs

    def __call__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer warnings about Python ints; shapes are checked by parity
                torch.onnx.export(
                    self.module.eval(),
                    tuple(self.example_args),
                    str(self.path),
                    input_names=names(self.inputs),
                    output_names=names(self.outputs),
                    dynamic_axes=dynamic_axes(self.inputs + self.outputs),
                    opset_version=OPSET,
                    dynamo=False,
                    do_constant_folding=True,
                )
        except (RuntimeError, ValueError, TypeError) as error:
            raise ExportError(f"torch.onnx.export failed for {self.path.name}.", note=str(error)[:500]) from error
        logger.info("exported %s (%.1f MB)", self.path, self.path.stat().st_size / 2**20)
        return self.path


def onnx_from_torch(module, example_args, path, inputs, outputs) -> Path:
    """Eager twin of `OnnxFromTorch`."""
    return OnnxFromTorch(module, example_args, path, inputs, outputs)()


class CleanedOnnx:
    """Removes dead nodes and sorts the graph with onnx-graphsurgeon; rewrites the file in place."""

    def __init__(self, path: Path | Callable[[], Path]):
        self.path = path

    def __call__(self) -> Path:
        import onnx
        import onnx_graphsurgeon as gs

        path = Path(_resolve(self.path))
        graph = gs.import_onnx(onnx.load(str(path)))
        graph.cleanup().toposort()
        onnx.save(gs.export_onnx(graph), str(path))
        return path


def cleaned_onnx(path) -> Path:
    """Eager twin of `CleanedOnnx`."""
    return CleanedOnnx(path)()
