"""Open Inference Protocol gRPC calls forwarded to a predictive engine's own gRPC endpoint.

MLServer serves the protocol's gRPC service beside its REST API (its grpc_port); a gRPC call
to the gateway goes there as the same message, with no JSON on the way, when the model's
config names that endpoint (`grpc_replicas`). The gateway's REST path still picks the replica,
admits, retries, meters and records the call: this module only carries one exchange.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import grpc
from tritonclient.grpc import service_pb2_grpc as pb_grpc

# The engine's gRPC codes as the HTTP statuses the gateway retries, meters and answers by;
# any other code is a 500.
STATUSES = {
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400, grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.CANCELLED: 499,
}
# As large as the gateway's own listener takes.
MAX_MESSAGE = 16 * 1024 * 1024


class EngineChannels:
    """One channel per engine gRPC endpoint, opened on first use and kept (gRPC reconnects
    by itself). Engines listen in plain text on the appliance's network, as for REST."""

    def __init__(self) -> None:
        self._stubs: dict[str, tuple[grpc.aio.Channel, Any]] = {}

    def stub(self, target: str) -> Any:
        if target not in self._stubs:
            channel = grpc.aio.insecure_channel(target, options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", MAX_MESSAGE)])
            self._stubs[target] = (channel, pb_grpc.GRPCInferenceServiceStub(channel))
        return self._stubs[target][1]


@dataclass(frozen=True)
class EngineCall:
    """One method of inference.GRPCInferenceService and its request, as the engine gets it."""

    channels: EngineChannels
    method: str
    request: Any

    async def send(self, target: str, timeout: float) -> tuple[int, bytes]:
        """(HTTP status, payload): the serialized reply on 200, else {"error": ...} as MLServer
        answers over REST. An engine that does not answer in `timeout` raises TimeoutError."""
        call = getattr(self.channels.stub(target), self.method)
        try:
            reply = await call(self.request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise TimeoutError(f"{target} did not answer {self.method} in {timeout:.0f} s") from None
            status = STATUSES.get(exc.code(), 500)
            return status, json.dumps({"error": exc.details() or exc.code().name}).encode()
        return 200, bytes(reply.SerializeToString())
