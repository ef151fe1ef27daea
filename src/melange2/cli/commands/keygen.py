"""``melange2 keygen [NAME.rsa]``: an RSA key pair for signing packages, like melange's."""

from __future__ import annotations

from pathlib import Path

import click

from melange2.apk.signing import DEFAULT_KEY_SIZE, generate_key
from melange2.cli.context import CliContext, pass_cli


@click.command()
@click.argument("name", default="melange.rsa", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--key-size",
    default=DEFAULT_KEY_SIZE,
    show_default=True,
    type=click.IntRange(min=1024),
    help="RSA key size in bits.",
)
@pass_cli
def keygen(ctx: CliContext, name: Path, key_size: int) -> None:
    """Write NAME (private key, mode 0600) and NAME.pub (public key) for signing."""
    pub = name.with_name(name.name + ".pub")
    for path in (name, pub):
        if path.exists():
            raise click.ClickException(f"{path} exists; refusing to overwrite a key")
    pair = generate_key(name, key_size=key_size)
    ctx.console.print(f"wrote {pair.private_key} and {pair.public_key}")
