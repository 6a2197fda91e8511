# -*- test-case-name: tests.unit.test_protocol -*-
"""
Checking a Barong token, for every dialect: the signature and claims
(L{peatio_ws.auth}), then the revocation list in Redis (SPEC §5).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from peatio_ws.auth import AuthError, Claims, TokenVerifier
from peatio_ws.logs import logger

if TYPE_CHECKING:
    from peatio_ws.redis import RevocationService

__all__ = ["check_token"]

_log = logger("peatio_ws.protocol")


def check_token(
    verifier: TokenVerifier, revocation: RevocationService | None, token: str, conn_id: str
) -> Claims | Deferred[Claims]:
    """
    The claims of C{token}, at once when there is no revocation check to
    make, else a Deferred. Fails (raises, or the Deferred fails) with
    L{AuthError}, whose reason names the rule: the verifier's, C{revoked}, or
    C{revocation_unavailable} when Redis could not answer under the deny policy.
    """
    claims = verifier.verify(token)
    if revocation is None:
        return claims

    def checked(revoked: bool) -> Claims:
        if revoked:
            raise AuthError("revoked")
        return claims

    def unavailable(failure: Failure) -> Claims:
        failure.trap(Exception)
        if failure.check(AuthError):
            failure.raiseException()
        _log.warn(
            "connection {conn_id}: revocation check failed: {error}",
            conn_id=conn_id,
            error=failure.getErrorMessage(),
        )
        raise AuthError("revocation_unavailable")

    return revocation.is_revoked(claims.jti).addCallback(checked).addErrback(unavailable)
