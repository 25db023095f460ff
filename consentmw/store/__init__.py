"""Storage: ClickHouse schema, the sink that inserts batches, the disk spool, the writer thread.

Nothing here knows about HTTP or consent rules; it stores the column batches it is given.
"""
