"""Protocols: one package each, every one exporting a `ProtocolSpec` (see spec.py).

The registry of all of them is `protocols.registry`.
"""
