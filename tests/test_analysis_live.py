"""Access analysis on running sidecars: the WhoCan and AccessOf calls, --require-no-new-access on reload and on push."""

from __future__ import annotations

import asyncio
import base64
import io
import os
from pathlib import Path
from typing import Any

import pytest

from authz.aio_client import AsyncAdminClient
from authz.cli import main
from authz.client import CallError
from authz.store import Store, StoreConfig
from tests.example_ids import ACCOUNT, OTHER_STREAM, PARTNER_ROLE, SHARED_STREAM, user
from tests.server_fixture import copy_example_bundle, server_factory  # noqa: F401  (fixture)

PARTNER_USER = user("partner-uploader", "111111111111")
PUT = "kinesisvideo:PutMedia"


def widen(bundle: Path) -> None:
    """The partner role's policy from the shared stream to every stream of the account."""
    path = bundle / f"{ACCOUNT}.yaml"
    path.write_text(path.read_text().replace("stream/shared_stream/*", "stream/*"))


def test_who_can_and_access_of_answer_on_the_live_state(server_factory: Any, tmp_path: Path) -> None:
    server = server_factory(copy_example_bundle(tmp_path / "bundle"), None, "--watch-interval", "0")
    with server.admin() as admin:
        found = admin.who_can(PUT, SHARED_STREAM)
        assert {(p.principal, tuple(p.via)) for p in found.principals} == {
            (user("camera"), ()), (user("admin"), ()), (PARTNER_ROLE, ()), (PARTNER_USER, (PARTNER_ROLE,))}
        assert found.owner_root == f"arn:aws:iam::{ACCOUNT}:root" and found.revision == admin.status().revision
        camera = next(p for p in found.principals if p.principal == user("camera"))
        assert camera.statements[0].policy_name.endswith("policy/KinesisVideoCameraWriter")
        access = admin.access_of(PARTNER_USER)
        assert access.known and [list(g.actions) for g in access.grants] == [["sts:AssumeRole"]]
        # An admin write changes the answer: the state being served is what is analysed.
        admin.attach_policy(ACCOUNT, "user", "viewer", f"arn:aws:iam::{ACCOUNT}:policy/KinesisVideoCameraWriter")
        assert user("viewer") in {p.principal for p in admin.who_can(PUT, SHARED_STREAM).principals}
        assert not admin.access_of(user("ghost")).known
        with pytest.raises(CallError) as err:
            admin.who_can("", SHARED_STREAM)
        assert err.value.code.name == "INVALID_ARGUMENT" and err.value.field == "action"
    with server.admin(token="wrong") as intruder, pytest.raises(CallError) as err:
        intruder.who_can(PUT, SHARED_STREAM)
    assert err.value.code.name == "UNAUTHENTICATED"

    async def asked_async() -> tuple[set[str], bool]:    # the asyncio client asks the same calls
        async with AsyncAdminClient(server.admin_addr, token=server.token) as aio:
            found = await aio.who_can(PUT, SHARED_STREAM)
            return {p.principal for p in found.principals}, (await aio.access_of(PARTNER_USER)).known

    principals, known = asyncio.run(asked_async())
    assert user("viewer") in principals and PARTNER_USER in principals and known


def test_the_sidecar_refuses_a_reload_that_grants_new_access(server_factory: Any, tmp_path: Path) -> None:
    bundle = copy_example_bundle(tmp_path / "bundle")
    server = server_factory(bundle, None, "--watch-interval", "0", "--require-no-new-access")
    with server.admin() as admin:
        revision = admin.status().revision
        widen(bundle)
        result = admin.reload()
        assert not result.ok and "grants new access" in result.error and PARTNER_ROLE in result.error
        status = admin.status()
        assert status.revision == revision and status.last_load_error == result.error and status.serving
        assert PARTNER_ROLE not in {p.principal for p in admin.who_can(PUT, OTHER_STREAM).principals}


# ------------------------------------------------------------------ authz push (a real PostgreSQL)


def push(url: str, directory: Path, *flags: str) -> tuple[int, str, str]:
    out = io.StringIO()
    err = io.StringIO()
    import contextlib

    with contextlib.redirect_stderr(err):
        code = main(["push", "--store", url, *flags, str(directory)], stdout=out)
    return code, out.getvalue(), err.getvalue()


def test_push_require_no_new_access_compares_with_what_the_store_holds(pg_url: str, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    key = os.urandom(32)
    monkeypatch.setenv("AUTHZ_STORE_KEY", base64.b64encode(key).decode())
    bundle = copy_example_bundle(tmp_path / "bundle")
    code, out, err = push(pg_url, bundle)
    assert code == 0, err
    widen(bundle)
    code, out, err = push(pg_url, bundle, "--require-no-new-access")
    assert code == 1 and "nothing was published" in err and "grants new access" in err and PARTNER_ROLE in err
    store = Store(StoreConfig(store_url=pg_url, store_key=key, watch_interval=0))
    store.open()
    try:
        assert store.revision == 1          # the first push only
    finally:
        store.close()
    code, out, err = push(pg_url, bundle)   # without the flag the same bundle is published
    assert code == 0 and "as revision 2" in out, err
