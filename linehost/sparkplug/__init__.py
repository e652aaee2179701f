"""Sparkplug B 3.0: the line host as an edge node (payloads from the Eclipse Tahu schema)."""
