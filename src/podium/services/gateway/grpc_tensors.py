"""Open Inference Protocol v2 tensors between their gRPC messages and the REST (JSON) form.

The gateway forwards gRPC calls to the predictive engine's REST API, so one path meters,
limits and retries both; this module is the translation, and nothing else.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2 as pb

from podium.services.gateway.errors import bad_request

NUMPY = {
    "BOOL": np.bool_, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}
# Which InferTensorContents field carries each datatype when a client sends typed contents.
CONTENTS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


def _raw_values(raw: bytes, datatype: str, where: str) -> list[Any]:
    if datatype == "BYTES":
        # Each element is a 4-byte little-endian length and then its bytes.
        values, at = [], 0
        while at < len(raw):
            if at + 4 > len(raw):
                raise bad_request(f"{where} raw contents end inside a length prefix", where)
            (size,) = struct.unpack_from("<I", raw, at)
            at += 4
            values.append(raw[at:at + size].decode("utf-8", errors="replace"))
            at += size
        return values
    dtype = np.dtype(NUMPY[datatype])
    if len(raw) % dtype.itemsize:
        raise bad_request(f"{where} raw contents are not a whole number of {datatype}", where)
    return list(np.frombuffer(raw, dtype=dtype).tolist())


def infer_body(request: pb.ModelInferRequest) -> dict[str, Any]:
    """The REST body of a gRPC ModelInferRequest (raw or typed contents alike)."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise bad_request(f"{len(raw)} raw input contents for {len(request.inputs)} inputs",
                          "raw_input_contents")
    inputs = []
    for i, tensor in enumerate(request.inputs):
        where = f"inputs[{i}]"
        if tensor.datatype not in NUMPY and tensor.datatype != "BYTES":
            raise bad_request(f"{where}.datatype {tensor.datatype!r} is not an Open Inference "
                              "Protocol datatype", f"{where}.datatype")
        if raw:
            data = _raw_values(raw[i], tensor.datatype, where)
        elif tensor.datatype == "FP16":
            raise bad_request(f"{where}: FP16 travels only as raw contents", where)
        else:
            data = list(getattr(tensor.contents, CONTENTS[tensor.datatype]))
            if tensor.datatype == "BYTES":
                data = [v.decode("utf-8", errors="replace") for v in data]
        inputs.append({"name": tensor.name, "datatype": tensor.datatype,
                       "shape": list(tensor.shape), "data": data})
    body: dict[str, Any] = {"inputs": inputs}
    if request.id:
        body["id"] = request.id
    if request.outputs:
        body["outputs"] = [{"name": o.name} for o in request.outputs]
    return body


def _raw_bytes(data: list[Any], datatype: str) -> bytes:
    if datatype == "BYTES":
        out = bytearray()
        for value in data:
            item = value if isinstance(value, bytes) else str(value).encode()
            out += struct.pack("<I", len(item)) + item
        return bytes(out)
    return np.asarray(data, dtype=NUMPY[datatype]).tobytes()


def _flat(data: Any) -> list[Any]:
    if isinstance(data, list):
        return [v for item in data for v in _flat(item)]
    return [data]


def infer_response(model: str, answer: dict[str, Any]) -> pb.ModelInferResponse:
    """A gRPC ModelInferResponse from the engine's REST answer, outputs as raw contents (as
    Triton's and MLServer's clients read them)."""
    response = pb.ModelInferResponse(model_name=model,
                                     model_version=str(answer.get("model_version") or ""),
                                     id=str(answer.get("id") or ""))
    for output in answer.get("outputs", []):
        datatype = str(output["datatype"])
        response.outputs.add(name=str(output["name"]), datatype=datatype,
                             shape=[int(d) for d in output["shape"]])
        response.raw_output_contents.append(_raw_bytes(_flat(output.get("data", [])), datatype))
    return response


def metadata_response(model: str, answer: dict[str, Any]) -> pb.ModelMetadataResponse:
    """A gRPC ModelMetadataResponse from the engine's REST metadata, under the public name."""
    response = pb.ModelMetadataResponse(name=model, platform=str(answer.get("platform") or ""),
                                        versions=[str(v) for v in answer.get("versions") or []])
    for side in ("inputs", "outputs"):
        for tensor in answer.get(side) or []:
            getattr(response, side).add(name=str(tensor["name"]),
                                        datatype=str(tensor["datatype"]),
                                        shape=[int(d) for d in tensor["shape"]])
    return response
