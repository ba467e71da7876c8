"""Options and values more than one command group takes."""

from __future__ import annotations

from typing import Optional

import typer

JSON_OPTION = typer.Option(False, "--json", help="Print exactly one JSON document on stdout.")
BACKUP_NAME_OPTION = typer.Option(..., "--name", help="Backup name (see `rem backup list`)")
WHICH_TENANT_OPTION = typer.Option(None, "--tenant", help="Disambiguate a name used by several tenants")
CF_OPTION = typer.Option(None, "--cf", help="Only this column family")
FROM_DB_OPTION = typer.Option(None, "--from-db", help="Another database's backups, by its name (see `rem backup "
                              "list --all-dbs`); legacy: the layout before databases had names")


def finite(value: float) -> float:
    """A threshold is a finite number at least 0: nan would compare false with everything (a 1,509-hour-old
    backup read as healthy) and a negative one inverts the check."""
    import math

    if not math.isfinite(value) or value < 0:
        raise typer.BadParameter(f"{value!r}: give a finite number of at least 0")
    return value


def tenant_value(value: Optional[str], allow_all: bool = False) -> Optional[str]:
    """--tenant as given: absent means every tenant; anything given ('' too) must name one."""
    from rem.format import check_tenant

    if value is None or (allow_all and value == "_all"):
        return value
    return check_tenant(value)


def age(created: str) -> str:
    """How long ago, as pgBackRest's info says it: 40 min, 5 h, 3 d."""
    from datetime import datetime, timezone

    seconds = (datetime.now(timezone.utc) - datetime.fromisoformat(created.replace("Z", "+00:00"))).total_seconds()
    return f"{seconds / 60:.0f} min" if seconds < 3600 else f"{seconds / 3600:.0f} h" if seconds < 172800 \
        else f"{seconds / 86400:.0f} d"


RATE_LIMIT_OPTION = typer.Option(None, "--rate-limit", min=0.001, help="MB/s to or from the store at most "
                                 "(P8_BACKUP_RATE_LIMIT_MB; default: no limit)")


def limited(settings, rate_limit: float | None):
    """The settings with --rate-limit, when given."""
    return settings.model_copy(update={"backup_rate_limit_mb": rate_limit}) if rate_limit else settings


def params(settings) -> dict:
    """Settings as a flow takes them: JSON, the form a deployment's parameters have in the Prefect UI."""
    return settings.model_dump(mode="json")
