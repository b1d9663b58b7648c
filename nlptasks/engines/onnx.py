"""ONNX Runtime for the encoder tasks: export a run's model as one graph, and run it behind `Predictor`.

The graph is the model a task builds, from token ids to the outputs the task reads (`logits`,
QA's start and end logits, the hidden states SimCSE pools), with LoRA merged in and batch and
sequence length left dynamic. `OnnxModel` runs it where the PyTorch model ran, inside the task's
own wrapper, tokenization and decoding (windows, calibration, thresholds, no-answer), so an
export answers as its run does.

`torch.onnx` builds the graph and `onnxruntime.quantization` makes int8 weights: Optimum's
exporter would do both, but pins transformers 4.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nlptasks.errors import UserInputError

log = logging.getLogger("nlptasks")
GRAPH = "model.onnx"
QUANTIZATIONS = ("int8",)
FP32_TOLERANCE = 1e-4


def is_onnx_folder(folder: Path) -> bool:
    return (folder / GRAPH).is_file()


class OutputsOf(torch.nn.Module):
    """A task model as a graph's body: positional id tensors in, the task's named outputs out, in order."""

    def __init__(self, model: torch.nn.Module, input_names: list[str], output_names: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.input_names = input_names
        self.output_names = output_names

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.model(**dict(zip(self.input_names, inputs)))
        return tuple(outputs[name].float() for name in self.output_names)


def export(model: torch.nn.Module, batch: dict[str, torch.Tensor], output_names: tuple[str, ...], folder: Path) -> None:
    """Write `model` (eval mode, adapters merged) as `folder/model.onnx`, checked against PyTorch on `batch`.

    `batch` is a real padded batch of two or more features of different lengths: the exporter
    keeps a dimension dynamic only where the example gives it no reason to fix it.
    """
    import onnx

    names = list(batch)
    graph = OutputsOf(model, names, output_names).eval()
    shapes = [dict.fromkeys(range(tensor.dim()), torch.export.Dim.DYNAMIC) for tensor in batch.values()]
    with torch.inference_mode(False), torch.no_grad():
        program = torch.onnx.export(
            graph,
            tuple(batch.values()),
            input_names=names,
            output_names=list(output_names),
            dynamic_shapes={"inputs": tuple(shapes)},
            dynamo=True,
            verbose=False,
        )
        expected = [tensor.numpy() for tensor in graph(*batch.values())]
    path = folder / GRAPH
    program.save(str(path), external_data=False)
    onnx.checker.check_model(str(path))
    _check_equal(expected, OnnxModel(folder, config=None)(**batch), output_names, FP32_TOLERANCE)


def quantize_int8(folder: Path) -> None:
    """Dynamic int8: weights stored as int8 per output channel, activations quantized on the fly (no calibration).

    Weights use 7 bits (`reduce_range`): without VNNI, x86 multiplies u8 by s8 in an instruction that
    saturates at 16 bits. The feed-forward down-projections stay fp32: their input, GELU's output,
    is one-sided with outliers, and one scale per tensor for it flips more labels than any other layer.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = folder / GRAPH
    quantized = folder / f"int8-{GRAPH}"
    with _root_logger_quiet():  # its advice to pre-process fails on these graphs: shapes stay symbolic
        quantize_dynamic(
            path,
            quantized,
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=True,
            nodes_to_exclude=_fed_by(onnx.load(str(path), load_external_data=False).graph, "MatMul", "Gelu"),
        )
    quantized.replace(path)


def _fed_by(graph: Any, op_type: str, producer_type: str) -> list[str]:
    """The `op_type` nodes whose first input is the output of a `producer_type` node."""
    produced = {output for node in graph.node if node.op_type == producer_type for output in node.output}
    return [node.name for node in graph.node if node.op_type == op_type and node.input[0] in produced]


@contextlib.contextmanager
def _root_logger_quiet() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _check_equal(
    expected: list[np.ndarray], got: dict[str, torch.Tensor], names: tuple[str, ...], tolerance: float
) -> None:
    """An export that disagrees with its model is refused, never shipped: a traced branch can silently fix a shape."""
    for name, want in zip(names, expected):
        difference = float(np.abs(got[name].numpy() - want).max())
        if difference > tolerance:
            raise RuntimeError(
                f"export: the ONNX graph's '{name}' differs from the PyTorch model's by {difference:.2e} "
                f"(allowed {tolerance:.0e}); this model cannot be exported faithfully"
            )


class Outputs(dict):
    """Outputs by name, read as a `ModelOutput` is: `outputs["logits"]` or `outputs.last_hidden_state`."""

    def __getattr__(self, name: str) -> torch.Tensor:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class OnnxModel:
    """An ONNX Runtime session that `Predictor` calls as it calls a PyTorch model: `model(**batch)[name]`."""

    def __init__(self, folder: Path, config: Any, threads: int | None = None) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in _available_providers()]
        self.session = onnxruntime.InferenceSession(str(folder / GRAPH), options, providers=providers)
        self.config = config
        self.input_names = [node.name for node in self.session.get_inputs()]
        self.output_names = [node.name for node in self.session.get_outputs()]

    def __call__(self, **batch: torch.Tensor) -> Outputs:
        missing = [name for name in self.input_names if name not in batch]
        if missing:
            raise UserInputError(f"the exported model needs inputs {missing} that the features lack")
        feed = {name: batch[name].numpy() for name in self.input_names}
        outputs = self.session.run(self.output_names, feed)
        return Outputs({name: torch.from_numpy(value) for name, value in zip(self.output_names, outputs)})

    def eval(self) -> OnnxModel:
        return self


def _available_providers() -> list[str]:
    import onnxruntime

    return onnxruntime.get_available_providers()
