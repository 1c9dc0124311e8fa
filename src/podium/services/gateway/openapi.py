"""The gateway's OpenAPI 3.1 document, served at /openapi.json."""

from __future__ import annotations

from typing import Any

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


def _errors(*codes: int) -> dict[str, Any]:
    described = {
        400: "The request is malformed; the message names the field.",
        401: "No API key, or one that is unknown, revoked or expired.",
        404: "No such model, or one the key may not use (the same answer for both).",
        409: "A key with this name exists.",
        413: "The request body is too large.",
        429: "A rate limit or quota is reached; see Retry-After.",
        502: "The engine failed.",
        503: "No healthy replica, or the gateway is at capacity.",
        504: "The engine did not answer in time.",
    }
    return {
        str(c): {
            "description": described[c],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for c in codes
    }


_OPENAI_ERRORS = (400, 401, 404, 413, 429, 502, 503, 504)
_TEXT = {"type": "string", "minLength": 1}
_TOKENS = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}
_PROMPT = {
    "oneOf": [
        _TEXT,
        {"type": "array", "items": _TEXT, "minItems": 1},
        _TOKENS,
        {"type": "array", "items": _TOKENS, "minItems": 1},
    ]
}
_SAMPLING = {
    "model": {"type": "string", "minLength": 1},
    "max_tokens": {"type": "integer", "minimum": 1, "maximum": 1048576},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    "top_p": {"type": "number", "minimum": 0, "maximum": 1},
    "n": {"type": "integer", "minimum": 1, "maximum": 16},
    "stream": {"type": "boolean"},
    "stream_options": {
        "type": "object",
        "properties": {"include_usage": {"type": "boolean"}},
    },
    "stop": {
        "oneOf": [
            {"type": "string"},
            {"type": "array", "items": {"type": "string"}, "maxItems": 4},
        ]
    },
    "seed": {"type": "integer"},
    "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2},
    "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2},
    "user": {"type": "string"},
}
_MESSAGE = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {
        "role": {"enum": ["system", "user", "assistant", "developer"]},
        "content": {"type": "string"},
    },
}


def _with_model(schema: dict[str, Any], names: list[str]) -> dict[str, Any]:
    if not names:
        return schema
    return {**schema, "properties": {**schema["properties"], "model": {"enum": names}}}


def _post(summary: str, schema: dict[str, Any], answer: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "security": [{"apiKey": []}],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": schema}},
            },
            "responses": {
                "200": {
                    "description": answer,
                    "content": {
                        "application/json": {"schema": {"type": "object"}},
                        "text/event-stream": {"schema": {"type": "string"}},
                    },
                },
                **_errors(*_OPENAI_ERRORS),
            },
        }
    }


def _get(summary: str, *codes: int, secured: bool = True, params: list[Any] | None = None,
         media: str = "application/json") -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            "200": {"description": "OK", "content": {media: {"schema": {}}}},
            **_errors(*codes),
        },
    }
    if secured:
        op["security"] = [{"apiKey": []}]
    if params:
        op["parameters"] = params
    return {"get": op}


def _name(param: str, names: list[str]) -> dict[str, Any]:
    schema: dict[str, Any] = {"enum": names} if names else {"type": "string"}
    return {"name": param, "in": "path", "required": True, "schema": schema}


def document(models: dict[str, str] | None = None) -> dict[str, Any]:
    """The OpenAPI document for the OpenAI and Open Inference Protocol v2 endpoints.

    models: the gateway's model names and kinds ("llm" or "predictive"); they become the
    enums of `model` fields and path parameters, so clients and fuzzers see real names.
    """
    models = models or {}
    llms = sorted(n for n, kind in models.items() if kind == "llm")
    predictive = sorted(n for n, kind in models.items() if kind == "predictive")
    return {
        "openapi": "3.1.0",
        "info": {"title": "Podium gateway", "version": "1"},
        "components": {
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": _ERROR},
        },
        "paths": {
            "/v1/models": _get("Models this key may use.", 401),
            "/v1/models/{model}": _get("One model.", 401, 404,
                                       params=[_name("model", sorted(models))]),
            "/v1/chat/completions": _post(
                "Chat completion, streamed by SSE when stream is true.",
                _with_model({
                    "type": "object",
                    "required": ["model", "messages"],
                    "properties": {
                        **_SAMPLING,
                        "messages": {"type": "array", "items": _MESSAGE, "minItems": 1},
                    },
                }, llms),
                "A chat.completion object, or chat.completion.chunk events.",
            ),
            "/v1/completions": _post(
                "Text completion, streamed by SSE when stream is true.",
                _with_model({
                    "type": "object",
                    "required": ["model", "prompt"],
                    "properties": {**_SAMPLING, "prompt": _PROMPT},
                }, llms),
                "A text_completion object, or its chunk events.",
            ),
            "/v1/embeddings": _post(
                "Embeddings of the input.",
                _with_model({
                    "type": "object",
                    "required": ["model", "input"],
                    "properties": {
                        "model": {"type": "string", "minLength": 1},
                        "input": _PROMPT,
                        "encoding_format": {"enum": ["float", "base64"]},
                        "user": {"type": "string"},
                    },
                }, llms),
                "A list of embedding objects.",
            ),
            "/health": _get("Any replica of any model can serve.", 503, secured=False),
            "/v2/health/live": _get("The gateway process is up.", secured=False),
            "/v2/health/ready": _get("The gateway can serve.", 503, secured=False),
            "/v2/models/{name}": _get("A predictive model's metadata.", 401, 404,
                                      params=[_name("name", predictive)]),
            "/v2/models/{name}/ready": _get("A predictive model is ready.", 401, 404, 503,
                                            params=[_name("name", predictive)]),
            "/v2/models/{name}/infer": {
                "post": {
                    "summary": "Open Inference Protocol v2 inference on a predictive model.",
                    "security": [{"apiKey": []}],
                    "parameters": [_name("name", predictive)],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {
                            "type": "object",
                            "required": ["inputs"],
                            "properties": {
                                "id": {"type": "string"},
                                "inputs": {"type": "array", "minItems": 1, "items": {
                                    "type": "object",
                                    "required": ["name", "shape", "datatype", "data"],
                                    "properties": {
                                        "name": {"type": "string"},
                                        "shape": {"type": "array",
                                                  "items": {"type": "integer", "minimum": 0}},
                                        "datatype": {"enum": ["FP32", "FP64", "INT32", "INT64",
                                                              "BYTES", "BOOL"]},
                                        "data": {"type": "array"},
                                    },
                                }},
                            },
                        }}},
                    },
                    "responses": {
                        "200": {"description": "Outputs.", "content": {
                            "application/json": {"schema": {"type": "object"}}}},
                        **_errors(400, 401, 404, 413, 429, 502, 503, 504),
                    },
                }
            },
            "/openapi.json": _get("This document.", 401),
        },
    }
