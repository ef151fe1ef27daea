"""``melange-server``: the build service (REST API, store, scheduler).

Not built yet: this release ships the BuildKit client and the local farm it stands on.
The command parses the reference's flags so scripts can be prepared, and says so.
"""

from __future__ import annotations

import sys

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--listen-addr", default=":8080", show_default=True, help="HTTP listen address.")
@click.option("--buildkit-addr", help="One BuildKit backend (single-backend mode).")
@click.option("--backends-config", type=click.Path(), help="Backends YAML (multi-backend mode).")
@click.option("--default-arch", default="x86_64", show_default=True, help="Default architecture.")
@click.option("--output-dir", default="/var/lib/melange/output", show_default=True)
@click.option("--gcs-bucket", help="Store artifacts and logs in this GCS bucket.")
def cli(**_: object) -> None:
    """Run the melange2 build service (not available in this release)."""
    click.echo(
        "melange-server: the build service is not part of this release yet; "
        "use `melange2 daemon info` and the local farm (`make farm-up`) meanwhile",
        err=True,
    )
    sys.exit(2)


def main() -> None:
    cli()
