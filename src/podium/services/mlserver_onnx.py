"""MLServer runtime that serves ONNX models with ONNX Runtime (MLServer ships none of its own).

Like podium.services.mlserver_skops it runs inside MLServer's venv (mlserver, onnxruntime),
never Podium's, and imports nothing else from Podium but model_signature (numpy only). A
model-settings.json that uses it:

    {"name": "digits", "implementation": "podium.services.mlserver_onnx.OnnxModel",
     "parameters": {"uri": "./digits.onnx"}}

An ONNX file is a graph of operators and weights: loading it runs no code of its author's, so
it needs no trust flag. Only ONNX Runtime's own CPU operators are available (no custom-op
library is ever registered).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.errors import MLServerError
from mlserver.types import InferenceRequest, InferenceResponse, MetadataTensor
from mlserver.utils import get_model_uri

from podium.services.model_signature import datatype, tensor

WELLKNOWN_FILENAMES = ["model.onnx"]
# ONNX Runtime names element types as "tensor(float)"; these are their numpy dtypes.
_ELEMENT_DTYPES = {
    "float": "float32", "double": "float64", "float16": "float16", "bool": "bool",
    "int8": "int8", "int16": "int16", "int32": "int32", "int64": "int64",
    "uint8": "uint8", "uint16": "uint16", "uint32": "uint32", "uint64": "uint64",
    "string": "object",
}


class InferenceRefused(MLServerError):  # type: ignore[misc]
    """A request the model cannot take as sent (HTTP 400, gRPC INVALID_ARGUMENT)."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg, status_code=400)


def element_dtype(onnxruntime_type: str) -> np.dtype[Any]:
    """The numpy dtype of an ONNX Runtime tensor type such as "tensor(float)"."""
    element = onnxruntime_type.removeprefix("tensor(").removesuffix(")")
    if element not in _ELEMENT_DTYPES:
        raise MLServerError(f"the model has a {onnxruntime_type} tensor, which Podium's ONNX "
                            "runtime does not serve; export it with numeric or string tensors")
    return np.dtype(_ELEMENT_DTYPES[element])


def session_signature(session: Any) -> dict[str, list[dict[str, Any]]]:
    """{"inputs": [...], "outputs": [...]} of a loaded model, as its graph declares them."""
    return {side: [tensor(t.name, element_dtype(t.type), t.shape) for t in tensors]
            for side, tensors in (("inputs", session.get_inputs()),
                                  ("outputs", session.get_outputs()))}


class OnnxModel(MLModel):  # type: ignore[misc]
    """Every output of the graph (or those the request names) for the inputs it takes."""

    async def load(self) -> bool:
        uri = await get_model_uri(self.settings, wellknown_filenames=WELLKNOWN_FILENAMES)
        self._session = onnxruntime.InferenceSession(str(Path(uri)),
                                                     providers=["CPUExecutionProvider"])
        self._inputs = {t.name: element_dtype(t.type) for t in self._session.get_inputs()}
        self._outputs = [t.name for t in self._session.get_outputs()]
        # GET /v2/models/NAME names the graph's inputs and outputs, as the push recorded
        # them; inputs or outputs written in model-settings.json win.
        if not self.settings.inputs and not self.settings.outputs:
            signature = session_signature(self._session)
            self.settings.inputs = [MetadataTensor(**t) for t in signature["inputs"]]
            self.settings.outputs = [MetadataTensor(**t) for t in signature["outputs"]]
        return True

    def _feeds(self, payload: InferenceRequest) -> dict[str, np.ndarray[Any, Any]]:
        given = {i.name: i for i in payload.inputs}
        unknown = sorted(set(given) - set(self._inputs))
        missing = sorted(set(self._inputs) - set(given))
        if unknown or missing:
            raise InferenceRefused(
                f"model {self.name!r} takes the inputs {', '.join(self._inputs)}; the request "
                f"gave {', '.join(given) or 'none'}; name each input as GET /v2/models/{self.name} "
                "lists it")
        feeds = {}
        for name, wanted in self._inputs.items():
            sent = given[name]
            if sent.datatype != datatype(wanted):
                raise InferenceRefused(
                    f"input {name!r} of model {self.name!r} is {sent.datatype}, but the model "
                    f"takes {datatype(wanted)}; send it as {datatype(wanted)}")
            try:
                feeds[name] = NumpyCodec.decode_input(sent).astype(wanted, copy=False)
            except ValueError as exc:
                raise InferenceRefused(f"input {name!r} of model {self.name!r}: its data does not "
                                       f"fill the shape {sent.shape} ({exc})") from exc
        return feeds

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        wanted = [o.name for o in payload.outputs or []] or self._outputs
        unknown = sorted(set(wanted) - set(self._outputs))
        if unknown:
            raise InferenceRefused(f"model {self.name!r} has no output {', '.join(unknown)}; its "
                                   f"outputs are {', '.join(self._outputs)}")
        try:
            results = self._session.run(wanted, self._feeds(payload))
        except (onnxruntime.capi.onnxruntime_pybind11_state.InvalidArgument,
                onnxruntime.capi.onnxruntime_pybind11_state.InvalidGraph) as exc:
            # A shape the graph does not take (ONNX Runtime names the input and the dimension).
            raise InferenceRefused(f"model {self.name!r} refused the request: {exc}") from exc
        return InferenceResponse(
            model_name=self.name, model_version=self.version, id=payload.id,
            outputs=[NumpyCodec.encode_output(n, np.asarray(r)) for n, r in zip(wanted, results, strict=True)],
        )
