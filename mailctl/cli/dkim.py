"""`mailctl dkim`: DKIM keys.

Part of the CLI: parses, calls `mailctl.message.dkim`, writes the key file, formats. Must not
be imported by anything outside mailctl/cli.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from mailctl.cli import console
from mailctl.cli.options import CONTEXT
from mailctl.errors import DkimError, MailctlError, UsageError
from mailctl.message.dkim import generate_keypair, txt_record

app = typer.Typer(help="DKIM keys.", context_settings=CONTEXT)


@app.command("keygen")
def dkim_keygen(
    selector: Annotated[str, typer.Option(help="Selector, e.g. s2026.")],
    domain: Annotated[str, typer.Option(help="Signing domain (d=), e.g. example.com.")],
    bits: Annotated[int, typer.Option(help="RSA key size.")] = 2048,
    algorithm: Annotated[
        str, typer.Option(help="rsa-sha256 (alias rsa) or ed25519-sha256 (alias ed25519).")
    ] = "rsa-sha256",
    out: Annotated[
        Path | None, typer.Option(help="Private key file [default: DOMAIN.SELECTOR.pem].")
    ] = None,
) -> None:
    """Create a DKIM key pair: the private key goes to a file (mode 0600), the DNS TXT
    record to publish is printed. Then add the key to the profile's `dkim:` list.

    Example: mailctl dkim keygen --selector s2026 --domain example.com
    """
    path = out or Path(f"{domain}.{selector}.pem")
    if path.exists():
        raise MailctlError(f"{path} exists; refusing to overwrite a private key")
    try:
        pem, txt = generate_keypair(bits, algorithm=algorithm)
    except (DkimError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    console.out.print(
        txt_record(selector, domain, txt), markup=False, highlight=False, soft_wrap=True
    )
    console.info(f"private key written to {path} (keep it secret); publish the record above")
