"""store: the append-only ClickHouse audit store behind one interface, two backends.

`chdb` embeds ClickHouse in-process (the default, under data_dir); `clickhouse-connect` talks to
ClickHouse servers. Both run the same numbered migrations from infra/clickhouse/ and the same
contract suite (tests/store/test_contract.py).

    base.py              the AuditStore protocol, its error tree, the table names
    rows.py              events, risk scores, decisions, checkpoints → rows (pure)
    avro_container.py    Avro bodies → one container file per batch, which ClickHouse decodes (pure)
    migrations.py        read, split, order and apply the shipped infra/clickhouse/*.sql; retention; readers
    connect.py           what both backends share through clickhouse-connect (errors, settings, results)
    chdb_store.py        ChdbStore(path): embedded engine, directory lock, one thread per handle
    clickhouse_store.py  ClickHouseStore(url, user, password, database): async HTTP client

Must not import `ingress`; `rows.py` and `migrations.py`'s parsing import no client library.
"""
