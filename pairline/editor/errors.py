"""The JSON-RPC and LSP error codes `pairline lsp` answers bad requests with."""

from __future__ import annotations

from pygls.exceptions import JsonRpcException

PARSE_ERROR = -32700  # the body is not JSON
INVALID_REQUEST = -32600  # JSON, but not a JSON-RPC message
INVALID_PARAMS = -32602  # params that do not parse, an unknown document, bad command arguments
REQUEST_FAILED = -32803  # LSP: well-formed, but not served (a document over the size limit, no model)


def request_failed(message: str) -> JsonRpcException:
    return JsonRpcException(message, code=REQUEST_FAILED)
