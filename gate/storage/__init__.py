"""The SQLite database: people, templates, doors and the hash-chained access log.

Schema changes are numbered migrations (:mod:`.migrations`); the log's chain
is in :mod:`.logchain`, its pruning in :mod:`.retention`.
"""
