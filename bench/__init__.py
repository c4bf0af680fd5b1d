"""The benchmark harness: engine micro-benchmark, gRPC load against the server and an echo floor, reports."""
