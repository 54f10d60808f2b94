"""TLS to the Space API: the trust and client certificate the settings name, for every client."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme
from pydantic import ValidationError

from pipeline.config import Settings, describe_errors
from pipeline.errors import ConfigOutageError
from pipeline.http11 import LeanClient
from pipeline.http_client import AiohttpClient, Timeouts
from pipeline.oauth2 import ClientCredentials, TokenSource
from pipeline.tls import ssl_context
from tests.test_http11 import OK, read_request, replying, server

AnyClient = LeanClient | AiohttpClient
Client = Callable[[ssl.SSLContext | None], AnyClient]


def lean(context: ssl.SSLContext | None) -> AnyClient:
    return LeanClient(Timeouts(connect=2, read=2), 4, context)


def aiohttp_client(context: ssl.SSLContext | None) -> AnyClient:
    return AiohttpClient(Timeouts(connect=2, read=2), 4, ssl_context=context)


@pytest.fixture(autouse=True)
def no_proxy_from_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's proxy variables would reroute the aiohttp client."""
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)


BOTH = pytest.mark.parametrize("make", [lean, aiohttp_client], ids=["lean", "aiohttp"])


class Pki:
    """A CA, the API's certificate, and files as an operator would mount them."""

    def __init__(self, directory: Path) -> None:
        self.authority = trustme.CA()
        self.ca_file = directory / "ca.crt"
        self.authority.cert_pem.write_to_path(self.ca_file)
        self.server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.authority.issue_cert("127.0.0.1").configure_cert(self.server)
        client = self.authority.issue_cert("space-pipeline@example.com")
        self.cert_file = directory / "tls.crt"
        self.key_file = directory / "tls.key"
        client.cert_chain_pems[0].write_to_path(self.cert_file)
        client.private_key_pem.write_to_path(self.key_file)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


@BOTH
async def test_the_ca_file_is_trusted_for_the_api(make: Client, pki: Pki) -> None:
    """``PIPELINE_SPACE_API_CA_FILE``: an API with a private CA's certificate is reached."""
    async with server(replying(OK), pki.server) as base, make(ssl_context(pki.ca_file)) as http:
        answer = await http.request("POST", base, {}, b"x")

    assert 204 == answer.status


@BOTH
async def test_an_untrusted_certificate_is_an_outage_of_the_configured_endpoint(
    make: Client, pki: Pki, tmp_path: Path
) -> None:
    """No record is at fault when the API's certificate cannot be verified: a ``config`` outage
    saying what failed, never a connection error that a probe would take for an API back up."""
    stranger = trustme.CA()
    other_ca = tmp_path / "other.crt"
    stranger.cert_pem.write_to_path(other_ca)
    for context in (ssl_context(other_ca), None):  # another CA, the system's trust
        async with server(replying(OK), pki.server) as base, make(context) as http:
            with pytest.raises(ConfigOutageError) as raised:
                await http.request("POST", base, {}, b"x")

        assert ("config", "tls") == (raised.value.outage, raised.value.reason)
        assert "certificate" in str(raised.value)


@BOTH
async def test_the_client_certificate_is_presented_to_an_api_that_requires_one(
    make: Client, pki: Pki
) -> None:
    """mTLS: the API verifies our certificate against its CA and answers."""
    pki.server.verify_mode = ssl.CERT_REQUIRED
    pki.authority.configure_trust(pki.server)
    seen: list[dict[str, object] | None] = []

    async def handler(reader: object, writer: object) -> None:
        seen.append(writer.get_extra_info("peercert"))  # type: ignore[attr-defined]
        await read_request(reader)  # type: ignore[arg-type]
        writer.write(OK)  # type: ignore[attr-defined]

    context = ssl_context(pki.ca_file, pki.cert_file, pki.key_file)
    async with server(handler, pki.server) as base, make(context) as http:
        answer = await http.request("POST", base, {}, b"x")

    assert 204 == answer.status
    assert [True] == [bool(peer) for peer in seen]


def test_no_tls_setting_leaves_the_system_trust() -> None:
    assert ssl_context(None, None, None) is None


# Checked at start


def problems(**overrides: object) -> list[str]:
    try:
        Settings(
            kafka_bootstrap_servers="localhost:9092",
            kafka_topics=("t",),  # type: ignore[arg-type]
            space_api_url="https://api.example/v1",
            **overrides,  # type: ignore[arg-type]
        )
    except ValidationError as error:
        return describe_errors(error)
    return []


def test_the_tls_files_must_exist_and_the_certificate_comes_with_its_key(
    pki: Pki, tmp_path: Path
) -> None:
    """One line each, naming the variable, so the pod fails at once (exit 2), not per record."""
    missing = tmp_path / "nowhere.pem"

    assert [f"PIPELINE_SPACE_API_CA_FILE: no such file: {missing}"] == problems(
        space_api_ca_file=missing
    )
    assert [
        "PIPELINE_SPACE_API_CLIENT_CERT_FILE and PIPELINE_SPACE_API_CLIENT_KEY_FILE go together"
        " (a client certificate and its key)"
    ] == problems(space_api_client_cert_file=pki.cert_file)
    assert [] == problems(
        space_api_ca_file=pki.ca_file,
        space_api_client_cert_file=pki.cert_file,
        space_api_client_key_file=pki.key_file,
    )


def test_tls_files_that_are_not_pem_are_refused_at_start(pki: Pki) -> None:
    """A CA bundle or a key that does not load is named, not found out at the first record."""
    found = problems(space_api_ca_file=pki.key_file)
    assert 1 == len(found)
    assert found[0].startswith("PIPELINE_SPACE_API_CA_FILE: cannot be loaded")
    found = problems(
        space_api_client_cert_file=pki.cert_file, space_api_client_key_file=pki.ca_file
    )
    assert 1 == len(found)
    assert found[0].startswith("PIPELINE_SPACE_API_CLIENT_CERT_FILE/_KEY_FILE: cannot be loaded")


@BOTH
async def test_an_untrusted_token_endpoint_is_an_outage_of_its_setting(
    make: Client, pki: Pki
) -> None:
    """A token URL whose certificate is not trusted is a fault of the configuration, reported as
    such (naming the token URL), not as credentials the API refuses."""
    async with server(replying(OK), pki.server) as base, make(None) as http:
        source = TokenSource(ClientCredentials(base + "/token", "stage", "s3cret"), http)
        with pytest.raises(ConfigOutageError, match="PIPELINE_OAUTH2_TOKEN_URL") as caught:
            await source.token()

    assert "tls" == caught.value.reason


@BOTH
async def test_a_token_endpoint_that_redirects_is_an_outage_of_its_setting(make: Client) -> None:
    """A redirect from the token endpoint is never followed; it names where it pointed."""
    moved = b"HTTP/1.1 301 Moved Permanently\r\nLocation: https://idp.example/t\r\n\r\n"
    async with server(replying(moved)) as base, make(None) as http:
        source = TokenSource(ClientCredentials(base + "/token", "stage", "s3cret"), http)
        with pytest.raises(ConfigOutageError, match="PIPELINE_OAUTH2_TOKEN_URL") as caught:
            await source.token()

    assert ("redirect", 301) == (caught.value.reason, caught.value.status)
    assert "https://idp.example/t" == caught.value.location
