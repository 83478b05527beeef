"""Signed tokens and grants (trio_ysync.auth), without a server."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest

from trio_ysync.auth import (
    Access,
    Forbidden,
    TokenAuthorizer,
    Unauthorized,
    create_token,
    read_secret_file,
    token_of,
)
from trio_ysync.connection import ConnectionRequest

SECRET = b"s" * 40


def request(path: str = "/notes", **headers: str) -> ConnectionRequest:
    return ConnectionRequest.from_target(path, list(headers.items()))


async def test_a_token_for_the_room_grants_read_write_with_its_subject() -> None:
    token = create_token(SECRET, "notes", subject="ada")
    grant = await TokenAuthorizer(SECRET)(request(f"/notes?token={token}"))
    assert grant.access is Access.READ_WRITE
    assert grant.identity == "ada"
    assert grant.expires_at is not None
    assert 3590 < grant.expires_at - time.time() <= 3600


async def test_read_only_and_prefix_tokens() -> None:
    token = create_token(SECRET, "team-a/", prefix=True, read_only=True)
    authorize = TokenAuthorizer(SECRET)
    grant = await authorize(request(f"/team-a%2Fplan?token={token}"))
    assert grant.read_only
    with pytest.raises(Forbidden):
        await authorize(request(f"/team-b%2Fplan?token={token}"))


async def test_the_token_may_come_in_an_authorization_header() -> None:
    token = create_token(SECRET, "notes")
    grant = await TokenAuthorizer(SECRET)(request(authorization=f"Bearer {token}"))
    assert grant.access is Access.READ_WRITE


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda: None, Unauthorized),
        (lambda: create_token(SECRET, "notes") + "x", Unauthorized),  # tampered signature
        (lambda: create_token(b"o" * 40, "notes"), Unauthorized),  # another secret
        (lambda: create_token(SECRET, "notes", ttl=-10), Unauthorized),  # expired
        (lambda: create_token(SECRET, "other"), Forbidden),  # another room
        (lambda: create_token(SECRET, "note", prefix=False), Forbidden),  # not a prefix token
        (lambda: jwt.encode({"room": "notes"}, SECRET, algorithm="HS512"), Unauthorized),
        (lambda: jwt.encode({"room": "notes"}, "", algorithm="none"), Unauthorized),
        (lambda: jwt.encode({"access": "rw"}, SECRET, algorithm="HS256"), Unauthorized),
        (lambda: jwt.encode({"room": "notes", "access": "x"}, SECRET), Unauthorized),
        (lambda: jwt.encode({"room": ["notes"]}, SECRET), Unauthorized),
    ],
)
@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_refusals(make: object, error: type[Exception]) -> None:
    token = make()  # type: ignore[operator]
    path = "/notes" if token is None else f"/notes?token={token}"
    with pytest.raises(error) as info:
        await TokenAuthorizer(SECRET)(request(path))
    assert info.value.http_status in (401, 403)  # type: ignore[attr-defined]


def test_server_wide_tokens_cover_every_room_and_only_they_do() -> None:
    authorize = TokenAuthorizer(SECRET)
    everything = authorize.claims(create_token(SECRET, "", prefix=True))
    assert authorize.grant(everything, None).access is Access.READ_WRITE
    one_room = authorize.claims(create_token(SECRET, "notes"))
    with pytest.raises(Forbidden):
        authorize.grant(one_room, None)


def test_short_secrets_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 32"):
        create_token(b"short", "notes")
    with pytest.raises(ValueError, match="at least 32"):
        TokenAuthorizer("short")


def test_secret_files_are_stripped(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(SECRET + b"\n")
    assert read_secret_file(path) == SECRET


def test_token_of_ignores_other_schemes() -> None:
    assert token_of(request(authorization="Basic abc")) is None
    assert token_of(request("/r?token=")) is None
