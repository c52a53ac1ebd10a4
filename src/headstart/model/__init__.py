"""Adapters, backbone and head; weights; scratch CNNs; freeze plans and cut points; the layer table."""
