"""mcpgw: the command line and the composition root that wires ingress, event log and consumers.

The only package allowed to import both `ingress` and `consumers`.
"""
