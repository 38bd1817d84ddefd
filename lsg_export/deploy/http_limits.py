"""Request limits and Prometheus metrics of `lsg-export serve`'s HTTP server.

`RequestLimits` (ASGI middleware) answers 413 to a POST body over `max_request_bytes` and 429 to a POST
beyond `max_concurrent_requests` in progress, before the request reaches a route, and counts every POST
(requests, errors by status, latency). The metrics live in prometheus_client's default registry, which
KServe's `/metrics` route exposes; with `--workers` each process counts its own requests.
"""
import time

import orjson

_METRICS = None


class Metrics:
    def __init__(self):
        from prometheus_client import Counter, Gauge, Histogram

        self.requests = Counter("lsg_requests", "POST requests received", ["endpoint"])
        self.errors = Counter("lsg_request_errors", "POST requests answered with a 4xx or 5xx status",
                              ["endpoint", "code"])
        self.latency = Histogram("lsg_request_seconds", "POST request latency, seconds", ["endpoint"],
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60))
        self.in_flight = Gauge("lsg_requests_in_flight", "POST requests in progress")
        self.batch_tokens = Histogram("lsg_batch_tokens", "padded tokens (rows x longest row) per embedding run",
                                      buckets=tuple(2 ** k for k in range(4, 18)))
        self.batch_rows = Histogram("lsg_batch_rows", "rows per embedding run",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.queue_depth = Gauge("lsg_queue_depth", "rows waiting for the embedding batcher")


def metrics():
    """The process's Metrics (prometheus_client refuses to register a name twice)."""
    global _METRICS
    if _METRICS is None:
        _METRICS = Metrics()
    return _METRICS


def endpoint_of(path):
    if path.endswith("/embeddings"):
        return "embeddings"
    return "infer" if path.endswith("/infer") else "other"


def error_body(path, status, message):
    """An error in the caller's protocol: OpenAI's {"error": {...}} under /v1 and /openai, KServe's otherwise."""
    if path.startswith(("/v1/", "/openai/")):
        kind = {404: "NotFoundError", 413: "RequestTooLarge", 429: "RateLimitError"}.get(status,
                                                                                          "invalid_request_error")
        return {"error": {"message": message, "type": kind, "param": None, "code": status}}
    return {"error": message}


async def send_error(send, path, status, message):
    body = orjson.dumps(error_body(path, status, message))
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class RequestLimits:
    def __init__(self, app, max_request_bytes, max_concurrent_requests):
        self.app = app
        self.max_request_bytes = max_request_bytes
        self.max_concurrent_requests = max_concurrent_requests
        self.in_flight = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        path = scope["path"]
        endpoint = endpoint_of(path)
        counters = metrics()
        counters.requests.labels(endpoint).inc()
        started = time.perf_counter()
        status = [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            if self.max_concurrent_requests and self.in_flight >= self.max_concurrent_requests:
                return await send_error(send_status, path, 429, f"too many requests in progress (the server "
                                        f"takes {self.max_concurrent_requests} at once, --max-concurrent-requests)"
                                        f": retry later")
            self.in_flight += 1
            counters.in_flight.inc()
            try:
                receive = await self._bounded(scope, receive)
                if receive is None:
                    return await send_error(send_status, path, 413, f"request body larger than "
                                            f"{self.max_request_bytes} bytes (--max-request-bytes)")
                await self.app(scope, receive, send_status)
            finally:
                self.in_flight -= 1
                counters.in_flight.dec()
        finally:
            counters.latency.labels(endpoint).observe(time.perf_counter() - started)
            if status[0] >= 400:
                counters.errors.labels(endpoint, str(status[0])).inc()

    async def _bounded(self, scope, receive):
        """`receive` for the app, or None when the body is over the limit: a Content-Length over it is refused
        unread; a body without one (chunked) is read here up to the limit and replayed."""
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit():
            return None if int(length) > self.max_request_bytes else receive
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            if size > self.max_request_bytes:
                return None
            if message["type"] != "http.request" or not message.get("more_body"):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()
        return replay
