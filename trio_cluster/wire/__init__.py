"""The wire layer: RESP encoding and parsing, command tables and reply decoding.

Knows nothing of sockets, pools or clusters; every layer above may use it.
"""
