"""Export a trained model to a self-contained ONNX file with a dynamic batch dimension."""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

logger = logging.getLogger(__name__)

#: Pinned opset: supported by ONNX Runtime 1.20+ and by torch's dynamo exporter.
OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
#: Traced batch size; parity is then checked at other sizes so a baked-in batch cannot hide.
TRACE_BATCH = 2


def export_onnx(
    model: nn.Module,
    path: Path,
    input_shape: tuple[int, int, int],
    *,
    opset: int = OPSET,
    trace_batch: int = TRACE_BATCH,
) -> str:
    """Write ``model`` (made eval, on CPU) to ``path`` as ONNX; returns the exporter used.

    The graph has one input ``input`` of shape ``[batch, *input_shape]`` and one output
    ``logits`` of shape ``[batch, classes]``, with ``batch`` symbolic. Weights are stored
    inside the file so the model loads from its directory alone. The file passes the
    ONNX checker.
    """
    if trace_batch < 2:
        raise ValueError(f"trace_batch is {trace_batch}; expected >= 2 so the batch size is not specialised")
    model = model.to("cpu").eval()
    dummy = torch.randn(trace_batch, *input_shape, generator=torch.Generator().manual_seed(0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="onnx-export-") as tmp:
        raw = Path(tmp) / "model.onnx"

        def export(**how: Any) -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    model,
                    (dummy,),
                    str(raw),
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    opset_version=opset,
                    **how,
                )

        exporter = "dynamo"
        try:
            export(
                dynamo=True,
                external_data=False,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                verbose=False,
            )
        except Exception as exc:  # the torch.export path rejects some graphs; TorchScript takes them
            logger.warning("dynamo ONNX export failed (%s); falling back to the TorchScript exporter", exc)
            exporter = "torchscript"
            for leftover in Path(tmp).iterdir():
                leftover.unlink()
            export(dynamo=False, dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        # Recent exporters may write weights to "model.onnx.data" beside the graph; loading
        # and re-saving without external data folds them into the one file we publish.
        proto = onnx.load(str(raw), load_external_data=True)
        _name_batch_dims(proto)
        proto.producer_name = f"cnnserve-export (torch {torch.__version__}, {exporter})"
        onnx.save_model(proto, str(raw), save_as_external_data=False)
        onnx.checker.check_model(str(raw), full_check=True)
        shutil.move(str(raw), path)
    logger.info("exported ONNX (opset %d, %s exporter) to %s", opset, exporter, path)
    return exporter


def _name_batch_dims(proto: onnx.ModelProto) -> None:
    """Give the input's and output's first dimension the symbolic name ``batch``."""
    for value in (*proto.graph.input, *proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims:
            if dims[0].HasField("dim_value") and dims[0].dim_value > 0:
                raise ValueError(
                    f"ONNX {value.name!r} has a fixed batch dimension {dims[0].dim_value}; "
                    "expected a dynamic one"
                )
            dims[0].dim_param = "batch"


def uses_external_data(path: Path) -> bool:
    """Whether the ONNX file at ``path`` keeps any tensor in an external file."""
    proto = onnx.load(str(path), load_external_data=False)
    return any(tensor.data_location == onnx.TensorProto.EXTERNAL for tensor in proto.graph.initializer)
