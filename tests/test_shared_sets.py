"""Principals whose policies are the same objects share one indexed policy set (Memos.compiled)."""

from __future__ import annotations

import json
from pathlib import Path

from authz.store import Store, StoreConfig

ACCOUNT = "123456789012"
STREAM = f"arn:aws:kinesisvideo:us-west-2:{ACCOUNT}:stream/s/1"
ALLOW = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "kinesisvideo:PutMedia",
                                                 "Resource": "*"}]}


def _store(tmp_path: Path) -> Store:
    users = "".join(f"  - name: cam{i}\n    groups: [cams]\n" for i in range(3))
    (tmp_path / "a.yaml").write_text(f'account: "{ACCOUNT}"\nregion: us-west-2\ngroups:\n  - name: cams\n'
                                     f"    inline:\n      p: {json.dumps(ALLOW)}\nusers:\n{users}"
                                     f"  - name: solo\n    inline:\n      p: {json.dumps(ALLOW)}\n")
    s = Store(StoreConfig(bundle_dir=tmp_path, watch_interval=0))
    s.open()
    return s


def _set(store: Store, user: str) -> object:
    snap = store.snapshot
    rp = snap.resolve(f"arn:aws:iam::{ACCOUNT}:user/{user}", 0.0)
    assert rp is not None and not hasattr(rp, "reason")
    return snap.policy_set(f"arn:aws:iam::{ACCOUNT}:user/{user}", rp, "", None, ACCOUNT,  # type: ignore[arg-type]
                           (f"a:{ACCOUNT}",))


def test_members_of_one_group_share_the_indexed_set_and_a_change_gives_them_a_new_one(tmp_path: Path) -> None:
    store = _store(tmp_path)
    try:
        first = [_set(store, f"cam{i}") for i in range(3)]
        assert first[0] is first[1] is first[2]
        # Another principal's inline policy with the same text is another Policy (its own name): not shared.
        assert _set(store, "solo") is not first[0]
        deny = {"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Action": "kinesisvideo:PutMedia",
                                                        "Resource": "*"}]}
        store.apply({"op": "PutInlinePolicy", "account": ACCOUNT, "kind": "group", "name": "cams",
                     "policy_name": "d", "document": json.dumps(deny)})
        after = [_set(store, f"cam{i}") for i in range(3)]
        assert after[0] is after[1] is after[2] and after[0] is not first[0]
        for i in range(3):
            assert not store.authorize(f"arn:aws:iam::{ACCOUNT}:user/cam{i}", "kinesisvideo:PutMedia",
                                       STREAM).result.allowed
        assert store.authorize(f"arn:aws:iam::{ACCOUNT}:user/solo", "kinesisvideo:PutMedia", STREAM).result.allowed
    finally:
        store.close()
