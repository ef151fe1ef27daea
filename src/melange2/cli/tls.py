"""buildctl's client TLS flags, shared by the commands that dial a daemon (``build``,
``test``, ``daemon info``) and by ``remote backends add`` (which reads the files here and
sends their contents to the server)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:  # melange2.buildkit loads gRPC and cryptography: only when TLS is given
    from melange2.buildkit.tls import ClientTLS

F = TypeVar("F", bound=Callable[..., Any])

#: environment variables the dialling commands read (``.farm/env`` sets them for a TLS farm)
ENV = {
    "caCert": "BUILDKIT_TLS_CACERT",
    "cert": "BUILDKIT_TLS_CERT",
    "key": "BUILDKIT_TLS_KEY",
    "serverName": "BUILDKIT_TLS_SERVERNAME",
}


def tls_options(*, envvars: bool = True, what: str = "the daemon") -> Callable[[F], F]:
    """``--tlscacert``, ``--tlscert``, ``--tlskey``, ``--tlsservername`` as buildctl names
    them; any of them turns TLS on."""

    def env(name: str) -> str | None:
        return ENV[name] if envvars else None

    def hint(name: str) -> str:
        return f" (env {ENV[name]})" if envvars else ""

    file = click.Path(dir_okay=False, path_type=Path)
    options = [
        click.option(
            "--tlscacert",
            type=file,
            envvar=env("caCert"),
            help=f"CA certificate (PEM) to verify {what}'s certificate{hint('caCert')}.",
        ),
        click.option(
            "--tlscert",
            type=file,
            envvar=env("cert"),
            help=f"Client certificate (PEM) shown to {what}{hint('cert')}.",
        ),
        click.option(
            "--tlskey",
            type=file,
            envvar=env("key"),
            help=f"The client certificate's private key (PEM){hint('key')}.",
        ),
        click.option(
            "--tlsservername",
            envvar=env("serverName"),
            help=f"Name {what}'s certificate must carry (default: the address's host)"
            f"{hint('serverName')}.",
        ),
    ]

    def decorate(f: F) -> F:
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


def tls_from_flags(kw: dict[str, Any]) -> ClientTLS | None:
    """The TLS settings the flags in ``kw`` give, or ``None`` when none was given. A bad
    file or PEM is a usage error naming the flag."""
    ca, cert, key = kw.get("tlscacert"), kw.get("tlscert"), kw.get("tlskey")
    server_name = kw.get("tlsservername") or ""
    if ca is None and cert is None and key is None and not server_name:
        return None
    from melange2.buildkit.tls import FLAGS, TLSMaterialError, load_client_tls

    try:
        return load_client_tls(ca_cert=ca, cert=cert, key=key, server_name=server_name)
    except TLSMaterialError as exc:
        raise click.BadParameter(exc.problem, param_hint=FLAGS[exc.field]) from exc
