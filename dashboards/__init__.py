"""dashboards: Grafana dashboards and alert rules as code; writes the JSON infra/ provisions.

Must not import `ingress` or `consumers`.
"""
