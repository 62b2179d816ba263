"""Transports: how target connections are opened and clients accepted."""
