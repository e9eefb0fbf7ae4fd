"""The Entra credential the Graph adapter calls Microsoft Graph with, chosen by the ``GRAPH_CREDENTIAL`` setting.

``credential_from_settings`` returns a synchronous azure-identity ``TokenCredential`` for the app registration: a
client secret, a certificate, or (``managed_identity``, the default) a client assertion made from a managed-identity
token that the app registration trusts through a federated credential, so production holds no secret at all.
azure.identity is imported only when a credential is made; nothing is requested from Entra until first use.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Any

TOKEN_EXCHANGE_SCOPE = "api://AzureADTokenExchange/.default"


class CredentialKind(StrEnum):
    SECRET = "secret"
    CERTIFICATE = "certificate"
    MANAGED_IDENTITY = "managed_identity"  # federated: the app trusts the managed identity's token (no secret at all)


def _federated_assertion(managed_identity: Any) -> Callable[[], str]:
    """The client-assertion callback: a managed-identity token for the Entra token-exchange audience."""

    def assertion() -> str:
        token: str = managed_identity.get_token(TOKEN_EXCHANGE_SCOPE).token
        return token

    return assertion


def credential_from_settings(
    kind: str | CredentialKind,
    tenant_id: str,
    client_id: str,
    secret: str | None = None,
    certificate: str | bytes | None = None,
    managed_identity_client_id: str | None = None,
) -> Any:
    """A (synchronous) azure-identity TokenCredential for the app registration ``client_id`` in ``tenant_id``.

    ``secret``: ClientSecretCredential. ``certificate``: CertificateCredential from PEM/PKCS12 bytes, PEM text or a
    file path. ``managed_identity``: ClientAssertionCredential whose assertion is a token of the (user-assigned, when
    ``managed_identity_client_id`` is given) managed identity for ``api://AzureADTokenExchange`` - the app
    registration has a federated credential trusting that identity. Nothing is requested from Entra here.
    Raises ValueError naming the missing or wrong setting.
    """
    try:
        which = CredentialKind(kind)
    except ValueError:
        raise ValueError(
            f"unknown Graph credential kind {kind!r}; use one of {', '.join(k.value for k in CredentialKind)}"
        ) from None
    if not tenant_id or not client_id:
        raise ValueError("the Graph credential needs a tenant id and a client id")
    if which is CredentialKind.SECRET:
        if not secret:
            raise ValueError("credential kind 'secret' needs a client secret")
        from azure.identity import ClientSecretCredential

        return ClientSecretCredential(tenant_id, client_id, secret)
    if which is CredentialKind.CERTIFICATE:
        if not certificate:
            raise ValueError("credential kind 'certificate' needs a certificate (PEM/PKCS12 bytes, PEM text or a path)")
        from azure.identity import CertificateCredential

        if isinstance(certificate, bytes):
            return CertificateCredential(tenant_id, client_id, certificate_data=certificate)
        if certificate.lstrip().startswith("-----BEGIN"):
            return CertificateCredential(tenant_id, client_id, certificate_data=certificate.encode())
        return CertificateCredential(tenant_id, client_id, certificate_path=certificate)
    from azure.identity import ClientAssertionCredential, ManagedIdentityCredential

    identity = (
        ManagedIdentityCredential(client_id=managed_identity_client_id)
        if managed_identity_client_id
        else ManagedIdentityCredential()
    )
    return ClientAssertionCredential(tenant_id, client_id, _federated_assertion(identity))

