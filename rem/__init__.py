"""The REM database (percolate-rocks' RocksDB store) as a library: format, open/lock, writes, settings.

Nothing in this package imports Prefect: it is the layer every task, flow and command stands on.
"""

__version__ = "0.1.0"
