"""The TLS context for the Space API, built in one place from the settings, for every client.

Without any setting, ``None``: each client then uses the system's trust, as it would anyway.
"""

from __future__ import annotations

import ssl
from pathlib import Path


def ssl_context(
    ca_file: Path | None = None, cert_file: Path | None = None, key_file: Path | None = None
) -> ssl.SSLContext | None:
    """A context verifying the API, presenting our certificate when given; ``None`` if unset.

    ``ca_file`` replaces the system's trust, as a private CA is what it is for.

    Raises ``OSError`` or ``ssl.SSLError`` when a file does not load (the settings check that at
    start, naming the variable).
    """
    if ca_file is None and cert_file is None:
        return None
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    if cert_file is not None:
        context.load_cert_chain(cert_file, key_file)
    return context


def problems(ca_file: Path | None, cert_file: Path | None, key_file: Path | None) -> list[str]:
    """What keeps the files from making a context, one line each naming the variable."""
    found = []
    if (cert_file is None) != (key_file is None):
        found.append(
            "PIPELINE_SPACE_API_CLIENT_CERT_FILE and PIPELINE_SPACE_API_CLIENT_KEY_FILE go together"
            " (a client certificate and its key)"
        )
    files = (("CA_FILE", ca_file), ("CLIENT_CERT_FILE", cert_file), ("CLIENT_KEY_FILE", key_file))
    for name, path in files:
        if path is not None and not path.is_file():
            found.append(f"PIPELINE_SPACE_API_{name}: no such file: {path}")
    if found:
        return found
    try:
        ssl_context(ca_file)
    except (OSError, ssl.SSLError) as error:  # a certificate that is no PEM is an SSLError
        found.append(f"PIPELINE_SPACE_API_CA_FILE: cannot be loaded as PEM certificates ({error})")
    if cert_file is not None:
        try:
            ssl.create_default_context().load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError) as error:
            found.append(
                "PIPELINE_SPACE_API_CLIENT_CERT_FILE/_KEY_FILE: cannot be loaded as a PEM"
                f" certificate and its unencrypted key ({error})"
            )
    return found
