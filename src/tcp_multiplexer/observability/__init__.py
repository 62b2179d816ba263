"""Observability: metrics read from the side of the request path."""
