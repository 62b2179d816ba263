"""Publishing what the devices say: each bridge's points to an MQTT broker, with Home
Assistant discovery, and commands from it to writable points.

A part of its own that reads the bridges from the side, as observability does: it takes
their readings (`observability/values.py`), their health and what their backgrounds
know of the device, and hands a command to a bridge as a request of a client named
`mqtt`, through the bridge's write rules. Nothing here is on a client's request path.
"""
