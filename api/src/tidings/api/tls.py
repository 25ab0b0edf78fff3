"""TLS client contexts from PEM held in memory (sealed secrets, never files).

Python's `ssl` loads a certificate chain only from a path. The PEM is handed
over through an anonymous in-memory file (memfd), so no key material touches a
disk and the read-only root of the image needs no writable directory; where
memfd is missing, a private temporary file removed at once.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Iterator


class TLSConfigError(ValueError):
    """PEM that does not load; the message names what (never the material)."""


@contextlib.contextmanager
def _pem_path(pem: str) -> Iterator[str]:
    data = pem.encode()
    memfd = getattr(os, "memfd_create", None)
    if memfd is not None:
        fd = memfd("tidings-pem", getattr(os, "MFD_CLOEXEC", 0))
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    handle, path = tempfile.mkstemp(prefix="tidings-pem-")
    try:
        os.write(handle, data)
        os.close(handle)
        yield path
    finally:
        os.unlink(path)


def client_context(
    *, ca_pem: str | None = None, cert_pem: str | None = None, key_pem: str | None = None
) -> ssl.SSLContext:
    """A verifying client context: `ca_pem` replaces the system CAs when given,
    `cert_pem` + `key_pem` are presented as the client certificate."""
    context = ssl.create_default_context()
    if ca_pem is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname, CERT_REQUIRED
        try:
            context.load_verify_locations(cadata=ca_pem)
        except (ssl.SSLError, ValueError) as error:
            raise TLSConfigError(f"the CA bundle is not PEM certificates ({error})") from None
    if (cert_pem is None) != (key_pem is None):
        raise TLSConfigError("a client certificate needs both tls.crt and tls.key")
    if cert_pem is not None and key_pem is not None:
        with _pem_path(cert_pem) as cert, _pem_path(key_pem) as key:
            try:
                context.load_cert_chain(cert, key)
            except (ssl.SSLError, ValueError, OSError) as error:
                reason = getattr(error, "reason", None) or type(error).__name__
                raise TLSConfigError(
                    f"tls.crt and tls.key do not load as a PEM certificate and its key ({reason})"
                ) from None
    return context
