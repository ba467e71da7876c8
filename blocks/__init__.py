"""Prefect blocks: where the database is, where backups go, how they are encrypted.

Register with `prefect block register -m blocks`; edit them in the Prefect UI.
"""

from blocks.backup import BackupEncryption, BackupStorage, RemDatabase

__all__ = ["RemDatabase", "BackupStorage", "BackupEncryption"]
