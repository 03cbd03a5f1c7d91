"""The server's OpenAPI 3.0 document (served at ``/openapi.json``), written out by hand so
it states exactly what the handlers accept and answer (schemathesis tests the server
against it)."""

from __future__ import annotations

from typing import Any

_ERR = {"$ref": "#/components/schemas/Error"}


def _resp(desc: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    r: dict[str, Any] = {"description": desc}
    if schema is not None:
        r["content"] = {"application/json": {"schema": schema}}
    return r


def _errors(*codes: str) -> dict[str, Any]:
    text = {
        "400": "Malformed body (not JSON, wrong shape).",
        "404": "Unknown model.",
        "413": "Body larger than the server's limit.",
        "422": "Input fails the model's schema; `errors` names each bad field.",
        "503": "Not ready, dependency down, or overloaded (then with Retry-After).",
    }
    return {c: _resp(text[c], _ERR) for c in codes}


def openapi_spec(models: list[str], version: str = "0") -> dict[str, Any]:
    name_param = {
        "name": "name",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "enum": models},
    }
    scalar = {
        "nullable": True,
        "oneOf": [{"type": "number"}, {"type": "string"}, {"type": "boolean"}],
    }
    instance = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "entity": {
                "oneOf": [
                    {"type": "string", "minLength": 1, "maxLength": 512},
                    {"type": "object", "additionalProperties": {"type": "string"}},
                ]
            },
            "features": {"type": "object", "additionalProperties": scalar},
        },
    }
    tensor = {
        "type": "object",
        "required": ["name", "shape", "datatype", "data"],
        "properties": {
            "name": {"type": "string"},
            "shape": {
                "type": "array",
                "items": {"type": "integer", "minimum": 0},
                "minItems": 1,
                "maxItems": 2,
            },
            "datatype": {"type": "string"},
            "data": {"type": "array", "items": scalar},
            "parameters": {"type": "object"},
        },
    }
    health = {
        "type": "object",
        "properties": {"live": {"type": "boolean"}, "ready": {"type": "boolean"}},
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Keel model server",
            "version": version,
            "description": "Open Inference Protocol v2 REST plus entity-keyed /v1/predict.",
        },
        "paths": {
            "/v2/health/live": {"get": {"responses": {"200": _resp("Live.", health)}}},
            "/v2/health/ready": {
                "get": {"responses": {"200": _resp("Ready.", health), **_errors("503")}}
            },
            "/v2": {"get": {"responses": {"200": _resp("Server metadata.", {"type": "object"})}}},
            "/v2/models/{name}": {
                "get": {
                    "parameters": [name_param],
                    "responses": {
                        "200": _resp("Model metadata.", {"type": "object"}),
                        **_errors("404", "503"),
                    },
                }
            },
            "/v2/models/{name}/ready": {
                "get": {
                    "parameters": [name_param],
                    "responses": {
                        "200": _resp("Model ready.", {"type": "object"}),
                        **_errors("404", "503"),
                    },
                }
            },
            "/v2/models/{name}/infer": {
                "post": {
                    "parameters": [name_param],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["inputs"],
                                    "properties": {
                                        "id": {"type": "string"},
                                        "inputs": {"type": "array", "items": tensor},
                                        "outputs": {"type": "array"},
                                        "parameters": {"type": "object"},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _resp("Output tensors.", {"type": "object"}),
                        **_errors("400", "404", "413", "422", "503"),
                    },
                }
            },
            "/v1/predict": {
                "post": {
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["instances"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "request_id": {
                                            "type": "string",
                                            "minLength": 1,
                                            "maxLength": 128,
                                        },
                                        "instances": {
                                            "type": "array",
                                            "items": instance,
                                            "minItems": 1,
                                        },
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _resp("Predictions.", {"$ref": "#/components/schemas/Predictions"}),
                        **_errors("400", "413", "422", "503"),
                    },
                }
            },
            "/healthz": {"get": {"responses": {"200": _resp("Live.", health)}}},
            "/readyz": {"get": {"responses": {"200": _resp("Ready.", health), **_errors("503")}}},
            "/metrics": {
                "get": {
                    "responses": {
                        "200": {
                            "description": "Prometheus exposition.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    }
                }
            },
        },
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "code"],
                    "properties": {
                        "error": {"type": "string"},
                        "code": {"type": "string"},
                        "errors": {"type": "array", "items": {"type": "object"}},
                    },
                },
                "Predictions": {
                    "type": "object",
                    "required": [
                        "request_id",
                        "model",
                        "version",
                        "digest",
                        "variant",
                        "predictions",
                    ],
                    "properties": {
                        "request_id": {"type": "string"},
                        "model": {"type": "string"},
                        "version": {"type": "string"},
                        "digest": {"type": "string"},
                        "variant": {"type": "string"},
                        "predictions": {"type": "array", "items": {"type": "object"}},
                    },
                },
            }
        },
    }
