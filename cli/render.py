"""The human renderings of the commands' results (with --json the result itself is printed)."""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console

from cli.options import age
from cli.output import human_bytes, table_renderer


def stats(console, stats) -> None:
    """`rem db stats`: totals, then a table per column family and per schema."""
    from rich.table import Table

    console.print(f"Database:    {stats.path}")
    console.print(f"Entities:    {stats.entities_total:,} ({stats.entities_live:,} live, "
                  f"{stats.entities_soft_deleted:,} soft-deleted)")
    console.print(f"Schemas:     {stats.schemas:,}")
    inline = sum(d.with_embedding for d in stats.schemas_detail.values())
    console.print(f"Embeddings:  {inline:,} live entities with a vector (inline, as the engine keeps them); "
                  f"{stats.embeddings:,} rows in the embeddings column family (the engine never writes it)")
    console.print(f"Edges:       {stats.edges:,}")
    console.print(f"Disk usage:  {human_bytes(stats.disk_usage_bytes)}")
    console.print(f"Logical WAL: {stats.wal_entries:,} entries, {human_bytes(stats.wal_size_bytes)}, latest sequence "
                  f"{stats.wal_latest_seq:,} (the wal column family, written only by a replication primary; "
                  "RocksDB's own sequence numbers, which backups record, are another count)")
    table = Table("Column family", "Keys", "Size", "SST files", "Levels", "Compression", "Ratio",
                  title="Column families")
    for name, cf in stats.column_families.items():
        levels = " ".join(f"{lvl}:{human_bytes(n)}" for lvl, n in cf.level_sizes.items())
        table.add_row(name, f"{cf.keys:,}", human_bytes(cf.size_bytes), str(cf.sst_files), levels, cf.compression,
                      f"{cf.compression_ratio:.2f}x" if cf.compression_ratio else "")
    console.print(table)
    schemas = Table("Schema", "Live", "Soft-deleted", "Entity bytes", "Embedding coverage", title="Schemas")
    for name, detail in stats.schemas_detail.items():
        coverage = detail.embedding_coverage
        schemas.add_row(name, f"{detail.live:,}", f"{detail.soft_deleted:,}", human_bytes(detail.bytes),
                        "" if coverage is None else f"{coverage:.1%}")
    console.print(schemas)


def verify(console, data: dict) -> None:
    """`rem db verify`: the verdict, what was checked, the serious findings, the info ones by cause."""
    from rich.table import Table

    infos = {k.split(":", 1)[1]: n for k, n in data["by_category"].items() if k.startswith("info:") and n}
    if data["critical"]:
        console.print(f"Verify: FAILED: {data['critical']:,} critical finding(s)", style="bold red")
    else:
        console.print("Verify: OK: nothing critical" + (f" ({sum(infos.values()):,} info findings: states "
                      "the engine's own write paths leave)" if infos else ""), style="bold green")
    console.print(f"Checked {', '.join(f'{n:,} {cf}' for cf, n in data['checked'].items())} "
                  f"in {data['seconds']:.1f} s")
    serious = [i for i in data["issues"] if i["severity"] != "info"]
    if serious:
        table = Table("SEVERITY", "CATEGORY", "ENTITY", "WHERE", "PROBLEM", "FIX")
        for issue in serious[:200]:
            table.add_row(issue["severity"], issue["category"], issue["entity_id"] or "",
                          f"{issue['cf']} {issue['key']}", issue["message"], issue["fix"])
        console.print(table)
    if infos:  # hundreds of rows of one cause say less than one row with its count
        first = {}
        for issue in data["issues"]:
            if issue["severity"] == "info":
                first.setdefault(issue["category"], issue)
        table = Table("INFO", "COUNT", "FOR EXAMPLE", "WHY / FIX", title="Info findings by cause")
        for category, count in infos.items():
            example = first.get(category)
            table.add_row(category, f"{count:,}", example["message"] if example else "",
                          example["fix"] if example else "")
        console.print(table)
    console.print("`--json` lists every finding.")


def backup_list(rows: list[dict], detail: bool) -> Callable[[Console], None]:
    """`rem backup list`: a table (wider with detail), then each backup's location on a line of its own."""
    locations = [f"{r['name']}: {r['location']}" for r in rows]
    if detail:
        return table_renderer(
            ["DB", "NAME", "TENANT", "CREATED", "AGE", "STATUS", "KEPT", "TOOK", "SIZE", "STORED", "ADDED",
             "ENTITIES", "HOST", "ONLINE", "LAYOUT", "ENCRYPTED", "LAST SEQUENCE", "SHA-256", "ANNOTATIONS"],
            [[r["db"], r["name"], r["tenant_id"] or "(all)", r["created"], age(r["created"]), r["status"],
              kept_text(r), f"{r['duration_seconds']:.1f} s", human_bytes(r["uncompressed_bytes"]),
              human_bytes(r["size_bytes"]), human_bytes(r["added_bytes"]),
              f"{r['entity_count']:,}{'~' if r['counts'] == 'estimated' else ''}", r["host"],
              "yes" if r["online"] else "no", r["layout"], (r["encryption"] or {}).get("mode", "no"),
              r["last_sequence"], r["checksum_sha256"][:16],
              " ".join(f"{k}={v}" for k, v in sorted(r["annotations"].items()))] for r in rows],
            "No backups found.", whole=("NAME",), after=locations)
    else:
        return table_renderer(
            ["DB", "NAME", "TENANT", "CREATED", "AGE", "SIZE", "ADDED", "STATUS"],
            [[r["db"], r["name"], r["tenant_id"] or "(all)", r["created"], age(r["created"]),
              human_bytes(r["logical_bytes"]), human_bytes(r["added_bytes"]), r["status"]]
             for r in rows], "No backups found.", whole=("NAME",), after=locations)


def kept_text(row: dict) -> str:
    if not row.get("kept"):
        return ""
    return f"until {row['keep_until'][:10]}" if row.get("keep_until") else "yes"


def prune_plan(console, plan: dict) -> None:
    """`rem backup prune`'s plan, shown before anything is deleted."""
    from rich.table import Table
    from rich.text import Text

    table = Table("ACTION", "NAME", "TENANT", "CREATED", "WHY")
    for row in plan["keep"]:
        table.add_row("keep", row["name"], row["tenant"], row["created"], ", ".join(row["why"]))
    for row in plan["delete"]:
        table.add_row(Text("delete", style="red"), row["name"], row["tenant"], row["created"], "")
    for row in plan.get("locked", []):
        table.add_row("locked", row["name"], row["tenant"], "", f"kept until {row['kept_until']} (S3 Object Lock)")
    console.print(table)
    console.print(f"WAL segments to delete (older than the oldest kept base): {plan['wal_segments_to_delete']}")


def index_rebuild(console, result: dict) -> None:
    """`rem index rebuild`: rows written per index, and each HNSW index with its recall."""
    for name in ("keys", "fields"):
        if name in result:
            r = result[name]
            console.print(f"{r['cf']}: {r['written']:,} rows written, {r['removed']:,} removed")
    if "hnsw" in result:
        from rich.table import Table

        table = Table("TENANT", "SCHEMA", "VECTORS", "DIM", "RECALL@10", "SECONDS")
        for b in result["hnsw"]:
            table.add_row(b["tenant"], b["schema"], f"{b['vectors']:,}", str(b["dimensions"]),
                          "n/a" if b["recall_at_10"] is None else f"{b['recall_at_10']:.3f}",
                          f"{b['seconds']:.2f}")
        console.print(table)


def change_log(console, result: dict) -> None:
    """`rem pitr log`: one line per second, tenant, kind and schema (a burst stands out); each change with --detail."""
    from rem.change_log import summary_line

    console.print(f"{result['changes_total']:,} changes from {result['from']} to {result['to']} "
                  f"(base {result['base_backup']}, {result['segments']} segment(s))")
    for row in result["summary"]:
        console.print(summary_line(row), soft_wrap=True)
    if "changes" in result:
        table_renderer(["TIME", "SEQ", "TENANT", "SCHEMA", "ENTITY", "KEY", "WHAT", "CHANGED"],
                       [[c["time"], c["sequence"], c["tenant"], c["schema"], c["entity_id"], c["key"], c["kind"],
                         ", ".join(c["changed"])] for c in result["changes"]])(console)


def undo(console, result: dict) -> None:
    """`rem pitr undo`: what was (or would be) written, the conflicts left, and the record to revert it."""
    if result.get("approved") is False:
        console.print(f"Rejected in the Prefect UI: nothing written ({result['to_write']:,} keys were previewed)")
        return
    verb = "Would write" if result["dry_run"] else "Wrote"
    console.print(f"{verb} {result['to_write']:,} keys ({result['already']:,} already as they were, "
                  f"{len(result['conflicts']):,} conflicts left as they are)"
                  + (f"; {result['bytes_written']:,} bytes" if result["bytes_written"] else ""))
    if result["record"]:
        console.print(f"Record: {result['record']} ({result.get('record_location')}); "
                      f"`rem pitr undo --revert {result['record']}` puts it all back", soft_wrap=True)
    shown = result.get("writes", [])[:50]
    if result["dry_run"] and shown:
        table_renderer(["CF", "KEY", "ACTION", "ENTITY", "WAS WRITTEN BY"],
                       [[w["cf"], w["key"], w["action"], w["entity_id"], w["kind"]] for w in shown])(console)
    if result["conflicts"]:
        console.print("Conflicts (written again after --to; --force puts them back too):")
        table_renderer(["CF", "KEY", "NOW", "AT --from"],
                       [[w["cf"], w["key"], (w.get("live") or "(absent)")[:60], (w.get("start") or "(absent)")[:60]]
                        for w in result["conflicts"][:50]])(console)


def restore_preview(console, result: dict) -> None:
    """`rem pitr restore --dry-run`: the plan, and for a tenant what would come back, vanish or change."""
    console.print(f"A restore to {result['target']} would start from base {result['base_backup']} (sequence "
                  f"{result['base_last_sequence']:,}) and replay at most {result['batches_at_most']:,} batches from "
                  f"{result['segments']} segment(s): {human_bytes(result['bytes_to_fetch'])} to fetch, about "
                  f"{human_bytes(result['database_bytes_after'])} of database after. Nothing was written.")
    if "changes" in result:
        if not result["changes"]:
            console.print(f"Tenant {result['tenant']}: its entities then are the live ones now.")
        table_renderer(["SCHEMA", "COME BACK", "VANISH", "CHANGE", "FOR EXAMPLE"],
                       [[schema, f"{row['come_back']:,}", f"{row['vanish']:,}", f"{row['change']:,}",
                         "; ".join(f"{what}: {s['key'] or s['id']}" for what, shown in row["samples"].items()
                                   for s in shown[:2])]
                        for schema, row in result["changes"].items()])(console)
