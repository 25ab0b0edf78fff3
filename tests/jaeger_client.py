"""A client of the real Jaeger v2 that hack/jaeger.sh starts (tests/conftest.py's
`jaeger` fixture): where to send spans, and the spans of one trace read back."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import aiohttp


@dataclass(frozen=True)
class Jaeger:
    """The real Jaeger v2 started by hack/jaeger.sh (hack/test-env.sh starts it):
    `otlp_http` and `otlp_grpc` (host:port) take spans (OTEL_EXPORTER_OTLP_ENDPOINT),
    `query` answers for them."""

    otlp_http: str
    query: str
    otlp_grpc: str

    def exporting_env(self, service: str, protocol: str = "http/protobuf") -> dict[str, str]:
        """OTEL_* for a process that should send its spans here, quickly, over
        OTLP/HTTP (protobuf) or OTLP/gRPC (plaintext)."""
        grpc = protocol == "grpc"
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{self.otlp_grpc}" if grpc else self.otlp_http,
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            "OTEL_SERVICE_NAME": service,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }

    async def spans(self, trace_id: str, count: int, within: float = 30.0) -> list[dict[str, Any]]:
        """The spans of trace `trace_id` (hex) as the query API returns them
        (OTLP JSON, each with its `serviceName`), once there are at least `count`."""
        deadline = time.monotonic() + within
        found: list[dict[str, Any]] = []
        async with aiohttp.ClientSession() as http:
            while True:
                async with http.get(f"{self.query}/api/v3/traces/{trace_id}") as response:
                    if response.status == 200:
                        found = _otlp_spans(await response.json(content_type=None))
                        if len(found) >= count:
                            return found
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"Jaeger has {len(found)} spans of trace {trace_id} after {within}s, "
                        f"expected {count}: {[s.get('name') for s in found]}"
                    )
                await asyncio.sleep(0.2)


def _otlp_spans(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Flatten `{"result": {"resourceSpans": [...]}}`; attributes as a plain dict."""
    spans = []
    for resource in body.get("result", body).get("resourceSpans", []):
        service = next(
            (
                _otlp_value(a["value"])
                for a in resource.get("resource", {}).get("attributes", [])
                if a["key"] == "service.name"
            ),
            None,
        )
        for scope in resource.get("scopeSpans", []):
            for span in scope.get("spans", []):
                span = dict(span)
                span["serviceName"] = service
                span["attributes"] = {
                    a["key"]: _otlp_value(a["value"]) for a in span.get("attributes", [])
                }
                for link in span.get("links", []):
                    link["attributes"] = {
                        a["key"]: _otlp_value(a["value"]) for a in link.get("attributes", [])
                    }
                spans.append(span)
    return spans


def _otlp_value(value: dict[str, Any]) -> Any:
    if "intValue" in value:
        return int(value["intValue"])
    for kind in ("stringValue", "boolValue", "doubleValue"):
        if kind in value:
            return value[kind]
    return value
