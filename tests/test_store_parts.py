"""The store's parts behind its facade: reload hooks (the server's allocator tuning is one, registered by the
server, never run by the store on its own), and arrows between the parts that point one way."""

from __future__ import annotations

import gc
from pathlib import Path

from authz.server import app
from authz.server.config import Config
from authz.store import Store, StoreConfig
from tests.server_fixture import copy_example_bundle
from tests.test_architecture import import_graph


def test_reload_hooks_run_after_each_load_that_loaded(tmp_path: Path) -> None:
    bundle = copy_example_bundle(tmp_path / "bundle")
    store = Store(StoreConfig(bundle_dir=bundle, watch_interval=0))
    calls: list[int] = []
    store.on_reload(lambda: calls.append(store.revision))
    store.open()
    try:
        assert calls == [0]           # the first load's hooks run before it is published (revision 1)
        assert store.revision == 1
        some = next(p for p in sorted(bundle.iterdir()) if p.suffix == ".yaml")
        some.write_text(some.read_text() + "\n# a comment changes no content\n")
        assert store.reload() == (True, "")
        assert calls == [0, 1]                       # the same content: nothing new in the log, same revision
        some.write_text(some.read_text().replace("region: us-west-2", "region: us-east-1", 1))
        assert store.reload() == (True, "")
        assert calls == [0, 1, 2]                    # new content: a LoadBundle record, a new revision
        (bundle / "broken.json").write_text("{not json")
        ok, _message = store.reload()
        assert not ok and calls == [0, 1, 2]         # a failed load publishes nothing and calls no hook
    finally:
        store.close()


def test_the_store_tunes_no_allocator_of_its_own_and_the_server_registers_it(tmp_path: Path) -> None:
    gc.unfreeze()
    store = Store(StoreConfig(bundle_dir=copy_example_bundle(tmp_path / "plain"), watch_interval=0))
    store.open()
    store.close()
    assert gc.get_freeze_count() == 0               # no hook registered: nothing frozen
    sidecar = app.start(Config(bundle=copy_example_bundle(tmp_path / "served"), listen="127.0.0.1:0",
                               watch_interval=0))
    try:
        assert gc.get_freeze_count() > 0            # the server's hook froze the loaded state
    finally:
        sidecar.stop(0)
        gc.unfreeze()


# Which of the store's parts each store module may import (docs/architecture.md, "The store's parts"): the
# facade -> the parts -> the holder; the modules below the holder (snapshot, state, cache, oplog, bundle,
# errors, memory) import none of them.
PARTS = ("authz.store.store", "authz.store.sts", "authz.store.decisions", "authz.store.admin", "authz.store.holder")
MAY_IMPORT = {
    "authz.store": {"authz.store.store"},                     # the package re-exports the facade
    "authz.store.store": {"authz.store.holder", "authz.store.decisions", "authz.store.sts", "authz.store.admin"},
    "authz.store.sts": {"authz.store.holder", "authz.store.decisions"},
    "authz.store.decisions": {"authz.store.holder"},
    "authz.store.admin": {"authz.store.holder"},
}


def test_the_store_parts_import_one_way() -> None:
    against = [str(edge) for module, edges in import_graph().items() if module.startswith("authz.store")
               for edge in edges if edge.target in PARTS and edge.target not in MAY_IMPORT.get(module, set())]
    assert not against, "arrows between the store's parts must point down:\n" + "\n".join(against)
