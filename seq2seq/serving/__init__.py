"""Serving: dynamic batching of concurrent requests, and the HTTP API over it."""
