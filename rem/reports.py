"""What the Prefect artifacts say, in plain markdown: what an operator acts on, in human units.

Built here, without Prefect, so that the command line, the flows and the tests share one wording.
"""

from __future__ import annotations

from typing import Any


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"


def table(rows: list[dict]) -> str:
    """A markdown table of rows (dicts with the same keys); '(nothing)' when there are none."""
    if not rows:
        return "(nothing)"
    head = list(rows[0])
    cell = lambda v: "-" if v is None else str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(r.get(h)) for h in head) + " |" for r in rows]
    return "\n".join(lines)


def fields(pairs: list[tuple[str, Any]]) -> str:
    return table([{"field": k, "value": v} for k, v in pairs])


def backup_report(m: dict, location: str) -> str:
    """One backup: what, where, how big, how long, from which host, and its checksum."""
    ratio = f"{m['uncompressed_bytes'] / m['size_bytes']:.2f}x" if m.get("size_bytes") else "-"
    estimated = " (RocksDB's estimate)" if m.get("counts") == "estimated" else ""
    return f"# Backup {m['name']}\n\n" + fields([
        ("database", m.get("db_name")), ("host", m.get("host")), ("tenant", m.get("tenant_id") or "all tenants"),
        ("taken", m["timestamp"]), ("duration", f"{m['duration_seconds']:.1f} s"),
        ("online", "yes (a writer held the database)" if m.get("online") else "no"),
        ("layout", m.get("layout")), ("uncompressed", human_bytes(m["uncompressed_bytes"])),
        ("compressed", human_bytes(m["size_bytes"])), ("ratio", ratio),
        ("uploaded by this backup", human_bytes(m.get("added_bytes") or m["size_bytes"])),
        ("entities", f"{m['entity_count']:,}{estimated}"), ("schemas", m.get("schema_count")),
        ("RocksDB last sequence", m.get("last_sequence")), ("compression", m.get("compression")),
        ("encryption", _encryption_text(m.get("encryption"))),
        ("kept", (f"until {m['keep_until']}" if m.get("keep_until") else "yes") if m.get("kept") else "no"),
        ("annotations", " ".join(f"{k}={v}" for k, v in sorted((m.get("annotations") or {}).items())) or "-"),
        ("location", location), ("SHA-256", f"`{m['checksum_sha256']}`")])


def _encryption_text(encryption: dict | None) -> str:
    if not encryption:
        return "not by rem (the bucket's own, if any)"
    return f"{encryption['cipher']}, data key {encryption['data_key']} wrapped by {encryption['kek']}"


def backup_rows(metadata: list[dict], locations: list[str]) -> list[dict]:
    """The recent-backups table: the same columns as a backup's report, one row per backup."""
    return [{"name": m["name"], "tenant": m.get("tenant_id") or "all", "taken": m["timestamp"],
             "duration": f"{m['duration_seconds']:.1f} s", "uncompressed": human_bytes(m["uncompressed_bytes"]),
             "compressed": human_bytes(m["size_bytes"]), "added": human_bytes(m.get("added_bytes") or m["size_bytes"]),
             "entities": f"{m['entity_count']:,}", "host": m.get("host"), "online": "yes" if m.get("online") else "no",
             "kept": (m.get("keep_until") or "yes") if m.get("kept") else "",
             "annotations": " ".join(f"{k}={v}" for k, v in sorted((m.get("annotations") or {}).items())),
             "location": where} for m, where in zip(metadata, locations)]


def restore_report(result: dict, m: dict) -> str:
    return f"# Restore of {m['name']}\n\n" + fields([
        ("into", result["target"]), ("mode", result["mode"]), ("database", m.get("db_name")),
        ("from host", m.get("host")), ("backup taken", m["timestamp"]), ("tenant", m.get("tenant_id") or "all tenants"),
        ("restored", human_bytes(m["uncompressed_bytes"])), ("entities", f"{result['entity_count']:,}"),
        ("duration", f"{result['seconds']:.1f} s"),
        ("checked", "every byte against its SHA-256, every recorded file present, opened by RocksDB"),
        ("repaired", "yes, nothing dropped" if result["repaired"] else "no"),
        ("SHA-256", f"`{m['checksum_sha256']}`")])


SEVERITY_ORDER = {"critical": 0, "error": 1, "warning": 2, "info": 3}


def verify_report(report: dict, worst: int = 10) -> str:
    """Every check's rows and findings by severity, then the worst findings with their fix."""
    checks = [{"rows": cf, "checked": f"{n:,}"} for cf, n in report["checked"].items()]
    findings = [{"severity": k.split(":")[0], "category": k.split(":")[1], "count": f"{n:,}"}
                for k, n in sorted(report["by_category"].items(), key=lambda kv: (SEVERITY_ORDER.get(kv[0].split(":")[0], 9), kv[0]))]
    listed = sorted(report["issues"], key=lambda i: SEVERITY_ORDER.get(i["severity"], 9))[:worst]
    verdict = "OK: nothing critical" if report["ok"] else f"FAILED: {report['critical']} critical finding(s)"
    return (f"# Verify: {verdict}\n\n{report['seconds']:.1f} s, {report.get('entities_per_second') or 0:,} "
            f"entities/s\n\n## Rows checked\n\n{table(checks)}\n\n## Findings\n\n{table(findings)}\n\n"
            f"## Worst findings\n\n" + table([{"severity": i["severity"], "category": i["category"],
                                                "entity": i["entity_id"], "row": f"{i['cf']} {i['key']}",
                                                "problem": i["message"], "fix": i["fix"]} for i in listed]))


def backup_failure_report(name: str, db: str, tenant: str | None, reason: str) -> str:
    """What a failed backup run shows in the UI: which backup, and why, as the page says it."""
    return "# Backup: FAILED\n\n" + fields([("backup", name), ("database", db), ("tenant", tenant or "(all)"),
                                              ("reason", reason)])


def drill_report(result: dict) -> str:
    counts = result.get("counts") or {}
    rows = [{"schema": s, "restored": counts["restored"].get(s), "live": counts["live"].get(s)}
            for s in sorted(set(counts.get("restored", {})) | set(counts.get("live", {})))] if counts else []
    return (f"# Recovery drill: {'PASSED' if result['passed'] else 'FAILED'}\n\n" + fields([
        ("backup", result["backup"]), ("database", result.get("db_path")), ("started", result["started_at"]),
        ("duration", f"{result['seconds']} s"), ("reason", result["reason"] or "-")])
        + ("\n\n## Live entities per schema\n\n" + table(rows) if rows else ""))


def pitr_report(status: dict) -> str:
    """The archive after a pass: the window it can restore, its segments and how far it lags."""
    lag = status.get("lag_seconds")
    return "# Log archive\n\n" + fields([
        ("database", status.get("db_name")), ("archive", status.get("archive")),
        ("archived through sequence", status.get("last_archived_sequence")),
        ("live last sequence", status.get("live_last_sequence")),
        ("recoverable up to", status.get("confirmed_timestamp") or "-"),
        ("lag", "-" if lag is None else f"{lag:.1f} s, {status.get('lag_batches')} batch(es)"),
        ("segments", status.get("segments")),
        ("gaps", ", ".join(f"{b['first_missing_seq']}-{b['last_missing_seq']}" for b in status["broken_ranges"])
         if status.get("broken_ranges") else "none")])


def undo_report(result: dict) -> str:
    """Markdown for an undo: what it covered, what it wrote, the conflicts it left, its record."""
    lines = [f"# Undo of {result['from']} to {result['to']}" + (" (dry run)" if result["dry_run"] else ""), "",
             f"- tenant: {result['tenant'] or 'every tenant'}; schema: {result['schema'] or 'every schema'}",
             f"- changes in the range: {result['changes']:,}; keys: {result['keys']:,}; "
             f"to write: {result['to_write']:,}; already as at the start: {result['already']:,}",
             f"- conflicts (written again after the range, left as they are): {len(result['conflicts']):,}",
             f"- record (`rem pitr undo --revert` puts it back): {result['record'] or '-'}", ""]
    rows = [{"state": w["state"], "cf": w["cf"], "key": w["key"], "action": w["action"]}
            for w in (result["writes"] + result["conflicts"])[:200]]
    return "\n".join(lines) + (table(rows) if rows else "")
