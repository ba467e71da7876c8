"""A database's backups: the catalog (metadata, claims, listing), the two layouts (archive,
incremental) behind one interface decided in layout.py, and creating and restoring one."""
