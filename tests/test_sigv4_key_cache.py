"""The derived SigV4 signing key is cached, and a rotated or deleted secret can never verify through the cache.

The cache (sigv4._signing_key) is keyed by everything the derivation reads: the secret itself, the scope
date, the region and the service. A request signed with a secret the store no longer holds for that key id
must fail even while the key derived from that secret is still in the cache.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

from google.rpc import code_pb2

from authz.gateway import sigv4
from authz.server.ext_authz import ExtAuthzServicer, GatewayOptions
from authz.store import Store, StoreConfig
from bench.check import ACCESS_KEY, check_request
from tests.server_fixture import copy_example_bundle

KEY_ID, OLD_SECRET = ACCESS_KEY
NEW_SECRET = "viewer/ROTATED/secret/key/do/not/use/01"


def _answer(servicer: ExtAuthzServicer, secret: str, store: Store) -> tuple[int, str]:
    now = datetime.fromtimestamp(store.clock(), tz=timezone.utc)
    r = servicer.Check(check_request(now, (KEY_ID, secret)), None)  # type: ignore[arg-type]
    return r.status.code, r.status.message


def _rewrite(bundle: Path, old: str, new: str) -> None:
    path = bundle / "123456789012.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_a_rotated_secret_never_verifies_with_the_old_one(tmp_path: Path) -> None:
    bundle = copy_example_bundle(tmp_path / "bundle")
    store = Store(StoreConfig(bundle_dir=bundle, watch_interval=0), clock=time.time)
    store.open()
    try:
        servicer = ExtAuthzServicer(store, GatewayOptions(region="us-west-2"))
        sigv4._signing_key.cache_clear()
        assert _answer(servicer, OLD_SECRET, store)[0] == code_pb2.OK
        assert _answer(servicer, OLD_SECRET, store)[0] == code_pb2.OK
        info = sigv4._signing_key.cache_info()
        assert (info.misses, info.hits) == (1, 1)                   # derived once, then reused

        _rewrite(bundle, f'secret: "{OLD_SECRET}"', f'secret: "{NEW_SECRET}"')   # same key id, new secret
        assert store.reload()[0]
        code, message = _answer(servicer, OLD_SECRET, store)       # the old key is still cached ...
        assert code != code_pb2.OK and message == "InvalidSignatureException"   # ... and never used
        assert _answer(servicer, NEW_SECRET, store)[0] == code_pb2.OK

        _rewrite(bundle, f'- {{id: {KEY_ID}, secret: "{NEW_SECRET}"}}', "[]")   # the key deleted
        assert store.reload()[0]
        for secret in (OLD_SECRET, NEW_SECRET):
            code, message = _answer(servicer, secret, store)
            assert code != code_pb2.OK and message == "UnrecognizedClientException"
    finally:
        store.close()


def test_the_cache_key_covers_date_region_and_service() -> None:
    sigv4._signing_key.cache_clear()
    base = sigv4._signing_key("s", "20260115", "us-west-2", "kinesisvideo")
    others = {sigv4._signing_key("s", "20260116", "us-west-2", "kinesisvideo"),
              sigv4._signing_key("s", "20260115", "eu-west-1", "kinesisvideo"),
              sigv4._signing_key("s", "20260115", "us-west-2", "sts"),
              sigv4._signing_key("t", "20260115", "us-west-2", "kinesisvideo")}
    assert base not in others and len(others) == 4
    assert sigv4._signing_key.cache_info().currsize == 5
    assert sigv4._signing_key.cache_info().maxsize == sigv4.SIGNING_KEY_CACHE_SIZE
