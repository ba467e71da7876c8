"""`rem`: global options before the group, as in the runbook: `rem --db-path restored-db db stats`.

Heavy modules (Prefect, boto3, the flows) load inside the commands that need them, so that a
command typed at 3 a.m. starts in a fraction of a second.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import typer

from cli import ops
from cli.backup import backup_app
from cli.db import db_app
from cli.output import PAGE_ON_FAILURE, fail, quiet_prefect
from cli.pitr import pitr_app
from rem.errors import ConfigError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Maintenance for REM databases: backup, restore, PITR, verify, stats.")
# Registered in the order `rem --help` lists them.
app.add_typer(db_app, name="db")
app.add_typer(backup_app, name="backup")
app.add_typer(ops.index_app, name="index")
app.add_typer(pitr_app, name="pitr")
app.add_typer(ops.metrics_app, name="metrics")
for name, command in (("check", ops.check), ("tenants", ops.tenants), ("drill", ops.drill), ("deploy", ops.deploy)):
    app.command(name)(command)
app.add_typer(ops.fleet_app, name="fleet")
app.command("export")(ops.export)
app.command("query")(ops.query)


@dataclass
class Globals:
    config: Optional[Path] = None
    flags: dict[str, Any] = field(default_factory=dict)

    def settings(self, as_json: bool = False, **more: Any):
        from rem.settings import load_settings

        try:
            return load_settings(self.config, **{**self.flags, **more})
        except ConfigError as exc:
            fail(str(exc), 2, as_json)


@app.callback()
def main_options(
    ctx: typer.Context,
    db_path: Optional[Path] = typer.Option(None, "--db-path", envvar="P8_DB_PATH", help="REM database directory"),
    config: Optional[Path] = typer.Option(None, "--config", envvar="P8_CONFIG", help="TOML settings file"),
    backup_dir: Optional[Path] = typer.Option(None, "--backup-dir", envvar="P8_BACKUP_DIR",
                                              help="Local backup directory"),
    bucket: Optional[str] = typer.Option(None, "--bucket", envvar="P8_S3_BUCKET", help="S3 bucket"),
    endpoint_url: Optional[str] = typer.Option(None, "--endpoint-url", envvar="P8_S3_ENDPOINT_URL",
                                               help="S3 endpoint"),
    db_name: Optional[str] = typer.Option(None, "--db-name", envvar="P8_DB_NAME", help="The database's name in the "
                                          "store; default: its directory name and RocksDB IDENTITY"),
    page: bool = typer.Option(False, "--page", help="Under Prefect, page on this run's failure as on a "
                              "scheduled one's (ad-hoc runs do not page by default)"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Prefect's own log lines (INFO)"),
) -> None:
    from click.core import ParameterSource

    PAGE_ON_FAILURE["page"] = page
    quiet_prefect(verbose)
    # A value typer read from the environment is left to the settings, which read it themselves, so
    # that a bad one is reported as the variable it came from, not as a flag.
    flags = {"db_path": db_path, "backup_dir": backup_dir, "s3_bucket": bucket, "s3_endpoint_url": endpoint_url,
             "db_name": db_name}
    names = {"s3_bucket": "bucket", "s3_endpoint_url": "endpoint_url"}
    ctx.obj = Globals(config if ctx.get_parameter_source("config") is not ParameterSource.ENVIRONMENT else None,
                      {k: v for k, v in flags.items()
                       if ctx.get_parameter_source(names.get(k, k)) is not ParameterSource.ENVIRONMENT})


def _moved_before_command(argv: list[str], option: str) -> list[str]:
    """argv with a global option (and its value) moved to the front, where it belongs."""
    takes_value = option not in ("--page", "--verbose", "-v")
    for i, arg in enumerate(argv):
        if arg == option or arg.startswith(option + "="):
            width = 2 if takes_value and arg == option else 1
            return argv[i:i + width] + argv[:i] + argv[i + width:]
    return argv


def main() -> None:
    import shlex
    import sys

    try:  # typer 0.20+ carries its own copy of click, and keeps Abort in typer.exceptions
        from typer._click import exceptions as click
        from typer.exceptions import Abort
    except ImportError:
        from click import exceptions as click
        from click.exceptions import Abort

    try:
        code = app(standalone_mode=False)
    except click.ClickException as exc:
        from typer import rich_utils  # with rich's markdown and traceback: imported only for a usage error

        if isinstance(exc, click.NoSuchOption) and exc.option_name in {
                name for param in typer.main.get_command(app).params for name in param.opts}:
            # `rem db stats --db-path X`: say where it goes
            fixed = " ".join(shlex.quote(a) for a in ["rem", *_moved_before_command(sys.argv[1:], exc.option_name)])
            exc.message = f"{exc.option_name} is a global option: give it before the command, as in: {fixed}"
        rich_utils.rich_format_error(exc)
        sys.exit(exc.exit_code)
    except Abort:
        print("Aborted!", file=sys.stderr)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
