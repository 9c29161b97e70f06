"""eventlog: the durable, ordered log between the ingress and the consumers.

One interface (`eventlog.base`), two backends: an embedded append-only segment log under the data
directory (the default for `mcpgw up`) and Kafka (aiokafka) for distributed deployments. Both are
driven by the same contract tests. May import `schemas`; must not import `ingress` or `consumers`.
"""
