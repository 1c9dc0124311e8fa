"""Checks on OpenAI request bodies: enough that engines never see a malformed request.

Only the fields the gateway or the engines rely on are checked; anything else passes
through untouched, as the engines define it.
"""

from __future__ import annotations

import json
import math
from typing import Any

from podium.services.gateway.errors import bad_request

_ROLES = {"system", "user", "assistant", "tool", "developer", "function"}
_NUMBER_RANGES = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
}
_INT_RANGES = {
    "max_tokens": (1, 1 << 20),
    "max_completion_tokens": (1, 1 << 20),
    "n": (1, 16),
    "top_logprobs": (0, 20),
    "seed": (-(1 << 63), (1 << 63) - 1),
}


def parse_body(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise bad_request("the request body is empty; send a JSON object")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        # The decoder gives up at Python's recursion limit, so a body of a million '['
        # costs a few hundred levels of work, not a million.
        raise bad_request(
            "the request body nests arrays or objects too deeply; send at most a few levels"
        ) from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    return body


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_tokens(value: Any) -> bool:
    return isinstance(value, list) and all(_is_int(t) and t >= 0 for t in value)


def _text_or_tokens(body: dict[str, Any], field: str) -> None:
    value = body.get(field)
    ok = (
        (isinstance(value, str) and value != "")
        or (
            isinstance(value, list)
            and len(value) > 0
            and (
                all(isinstance(v, str) and v != "" for v in value)
                or (_is_tokens(value))
                or all(_is_tokens(v) and len(v) > 0 for v in value)
            )
        )
    )
    if not ok:
        raise bad_request(
            f"'{field}' must be a non-empty string, a list of strings, or token ids", field
        )


def _messages(body: dict[str, Any]) -> None:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list of {role, content} objects",
                          "messages")
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if not isinstance(role, str) or role not in _ROLES:
            raise bad_request(
                f"messages[{i}] must be an object whose 'role' is one of {sorted(_ROLES)}",
                f"messages[{i}].role",
            )
        content = message.get("content")
        if content is None and message.get("role") != "assistant":
            raise bad_request(f"messages[{i}].content is missing", f"messages[{i}].content")
        if content is not None and not isinstance(content, str | list):
            raise bad_request(f"messages[{i}].content must be a string or a list of parts",
                              f"messages[{i}].content")
        if isinstance(content, list):
            for part in content:
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise bad_request(
                        f"messages[{i}].content parts must be objects with a 'type'",
                        f"messages[{i}].content",
                    )


def _common(body: dict[str, Any]) -> None:
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise bad_request("'model' must name a model; GET /v1/models lists them", "model")
    for field, (low, high) in _NUMBER_RANGES.items():
        value = body.get(field)
        if value is None:
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or not low <= value <= high
        ):
            raise bad_request(f"'{field}' must be a number from {low} to {high}", field)
    for field, (ilow, ihigh) in _INT_RANGES.items():
        value = body.get(field)
        if value is not None and (not _is_int(value) or not ilow <= value <= ihigh):
            raise bad_request(f"'{field}' must be an integer from {ilow} to {ihigh}", field)
    for field in ("stream", "logprobs", "echo"):
        if field in body and body[field] is not None and not isinstance(body[field], bool):
            raise bad_request(f"'{field}' must be true or false", field)
    stop = body.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop)
                                  and len(stop) <= 4)
    ):
        raise bad_request("'stop' must be a string or a list of up to 4 strings", "stop")
    options = body.get("stream_options")
    if options is not None and (
        not isinstance(options, dict)
        or not isinstance(options.get("include_usage", False), bool)
    ):
        raise bad_request("'stream_options' must be an object like {\"include_usage\": true}",
                          "stream_options")
    if options is not None and not body.get("stream"):
        raise bad_request("'stream_options' is only allowed when 'stream' is true",
                          "stream_options")


def check_openai(endpoint: str, body: dict[str, Any]) -> None:
    """Raise a 400 GatewayError naming the first field that an engine would choke on."""
    _common(body)
    if endpoint == "/v1/chat/completions":
        _messages(body)
    elif endpoint == "/v1/completions":
        _text_or_tokens(body, "prompt")
    elif endpoint == "/v1/embeddings":
        _text_or_tokens(body, "input")
        if body.get("stream"):
            raise bad_request("embeddings cannot be streamed", "stream")
        fmt = body.get("encoding_format")
        if fmt is not None and fmt not in ("float", "base64"):
            raise bad_request("'encoding_format' must be 'float' or 'base64'", "encoding_format")


_V2_NUMBERS = {"FP16", "FP32", "FP64"}
_V2_INTEGERS = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
_V2_TYPES = _V2_NUMBERS | _V2_INTEGERS | {"BOOL", "BYTES"}


# Tensors of more dimensions than this are refused rather than flattened recursively.
MAX_TENSOR_DEPTH = 32


def _flatten(data: Any, depth: int = 0) -> list[Any] | None:
    if not isinstance(data, list) or depth > MAX_TENSOR_DEPTH:
        return None
    flat: list[Any] = []
    for item in data:
        if isinstance(item, list):
            inner = _flatten(item, depth + 1)
            if inner is None:
                return None
            flat.extend(inner)
        else:
            flat.append(item)
    return flat


def _fits(value: Any, datatype: str) -> bool:
    if datatype == "BOOL":
        return isinstance(value, bool)
    if datatype == "BYTES":
        return isinstance(value, str)
    if isinstance(value, bool):
        return False
    if datatype in _V2_INTEGERS:
        return isinstance(value, int)
    return isinstance(value, int | float) and math.isfinite(value)


def check_infer(body: dict[str, Any]) -> None:
    """Open Inference Protocol v2 request shape: each input's data fits its shape and datatype."""
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise bad_request("'inputs' must be a non-empty list of tensors", "inputs")
    for i, tensor in enumerate(inputs):
        where = f"inputs[{i}]"
        if not isinstance(tensor, dict):
            raise bad_request(f"{where} must be an object with name, shape, datatype, data", where)
        name, shape, datatype = tensor.get("name"), tensor.get("shape"), tensor.get("datatype")
        if not isinstance(name, str) or not name:
            raise bad_request(f"{where}.name must be a non-empty string", f"{where}.name")
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise bad_request(f"{where}.shape must be a list of sizes (integers >= 0)",
                              f"{where}.shape")
        if not isinstance(datatype, str) or datatype not in _V2_TYPES:
            raise bad_request(f"{where}.datatype must be one of {sorted(_V2_TYPES)}",
                              f"{where}.datatype")
        flat = _flatten(tensor.get("data"))
        if flat is None:
            raise bad_request(
                f"{where}.data must be a list of values nested at most {MAX_TENSOR_DEPTH} deep",
                f"{where}.data",
            )
        if len(flat) != math.prod(shape):
            raise bad_request(
                f"{where}.data has {len(flat)} values but shape {shape} needs {math.prod(shape)}",
                f"{where}.data",
            )
        if not all(_fits(v, datatype) for v in flat):
            raise bad_request(f"{where}.data holds values that are not {datatype}", f"{where}.data")
    for field, kind in (("id", str), ("parameters", dict), ("outputs", list)):
        if field in body and not isinstance(body[field], kind):
            raise bad_request(f"'{field}' has the wrong type", field)
