"""consumers: readers of the event log that build projections (audit store, risk scores).

Must not import `ingress`; shares only `schemas` with it.
"""
