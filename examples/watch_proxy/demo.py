"""The parts around the proxy for trying it by hand: a media upstream, a camera, and the administrator's Deny.

    python examples/watch_proxy/demo.py upstream --listen 127.0.0.1:9000
    python examples/watch_proxy/demo.py camera --proxy 127.0.0.1:8080 \\
        --principal arn:aws:iam::123456789012:user/camera
    AUTHZ_ADMIN_TOKEN=... python examples/watch_proxy/demo.py deny --admin 127.0.0.1:50060 --user camera \\
        [--from TIME | --undo]

See README.md for the whole walk-through.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import time

from authz.aio_client import AsyncAdminClient

YOUR_STREAM = "arn:aws:kinesisvideo:us-west-2:123456789012:stream/your_stream/0123456789012"
FRAGMENT_BYTES = 16 * 1024          # what the camera sends at a time
FRAGMENTS_PER_SECOND = 10
DENY_POLICY = "WatchProxyDemoDeny"


def host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


async def upstream(listen: str) -> None:
    """A media service stand-in: counts the bytes of each PutMedia and prints when the connection ends."""
    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        print(f"upstream: {head.splitlines()[0].decode()} from {writer.get_extra_info('peername')}")
        # The answer: one JSON ack line per read, for as long as the request lasts (it ends when the connection does).
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n")
        total = 0
        try:
            while data := await reader.read(1 << 16):
                total += len(data)
                writer.write(json.dumps({"EventType": "RECEIVED", "Bytes": total}).encode() + b"\n")
                await writer.drain()
        except ConnectionError as exc:
            print(f"upstream: connection lost ({exc})")
        print(f"upstream: stream ended after {total} bytes")
        writer.close()

    server = await asyncio.start_server(session, *host_port(listen))
    print(f"upstream: listening on {listen}")
    async with server:
        await server.serve_forever()


async def camera(proxy: str, principal: str, stream_arn: str) -> None:
    """PutMedia through the proxy: a fragment every 1/FRAGMENTS_PER_SECOND s until the proxy closes."""
    reader, writer = await asyncio.open_connection(*host_port(proxy))
    writer.write(f"POST /putMedia HTTP/1.1\r\nhost: {proxy}\r\nx-authz-principal: {principal}\r\n"
                 f"x-amzn-stream-arn: {stream_arn}\r\ntransfer-encoding: chunked\r\n\r\n".encode())
    started = time.monotonic()

    async def send() -> None:
        fragment = b"%x\r\n%s\r\n" % (FRAGMENT_BYTES, b"\x1a" * FRAGMENT_BYTES)
        with contextlib.suppress(ConnectionError):
            while True:
                writer.write(fragment)
                await writer.drain()
                await asyncio.sleep(1 / FRAGMENTS_PER_SECOND)     # the camera's frame rate

    sender = asyncio.create_task(send())
    try:
        for n in itertools.count():
            if not (line := await reader.readline()):
                break
            if not line.startswith(b"{") or n % FRAGMENTS_PER_SECOND == 0:    # the head, then an ack a second
                print(f"camera: {time.monotonic() - started:7.2f} s  {line.decode().rstrip()}")
    except ConnectionError as exc:
        print(f"camera: {time.monotonic() - started:7.2f} s  connection lost ({exc})")
    else:
        print(f"camera: {time.monotonic() - started:7.2f} s  the proxy closed the stream")
    sender.cancel()


async def deny(admin: str, account: str, user: str, undo: bool, start: str | None) -> None:
    """An inline policy that denies PutMedia to the user, from `start` (ISO 8601) or at once: every open watch of
    it turns to a deny then. `undo` removes it (`make run` keeps admin changes in .state)."""
    statement: dict[str, object] = {"Effect": "Deny", "Action": "kinesisvideo:PutMedia", "Resource": "*"}
    if start:
        statement["Condition"] = {"DateGreaterThanEquals": {"aws:CurrentTime": start}}
    document = {"Version": "2012-10-17", "Statement": [statement]}
    async with AsyncAdminClient(admin, token=os.environ.get("AUTHZ_ADMIN_TOKEN")) as client:
        if undo:
            await client.delete_inline_policy(account, "user", user, DENY_POLICY)
        else:
            await client.put_inline_policy(account, "user", user, DENY_POLICY, document)
    done = "removed from" if undo else "put on"
    print(f"deny: {DENY_POLICY} {done} user {user} of {account}" + (f", denying from {start}" if start else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    sub = ap.add_subparsers(dest="command", required=True)
    up = sub.add_parser("upstream", help="run the media service stand-in")
    up.add_argument("--listen", default="127.0.0.1:9000")
    cam = sub.add_parser("camera", help="stream PutMedia through the proxy until it closes")
    cam.add_argument("--proxy", default="127.0.0.1:8080")
    cam.add_argument("--principal", default="arn:aws:iam::123456789012:user/camera")
    cam.add_argument("--stream-arn", default=YOUR_STREAM)
    den = sub.add_parser("deny", help="put an inline Deny of PutMedia on a user (needs AUTHZ_ADMIN_TOKEN)")
    den.add_argument("--admin", default="127.0.0.1:50060", help="the sidecar's --admin-listen address")
    den.add_argument("--account", default="123456789012")
    den.add_argument("--user", default="camera")
    den.add_argument("--undo", action="store_true", help="remove the Deny again")
    den.add_argument("--from", dest="start", metavar="TIME",
                     help="deny only from this instant, e.g. 2026-12-06T10:00:00Z (a time condition); default: now")
    a = ap.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        if a.command == "upstream":
            asyncio.run(upstream(a.listen))
        elif a.command == "camera":
            asyncio.run(camera(a.proxy, a.principal, a.stream_arn))
        else:
            asyncio.run(deny(a.admin, a.account, a.user, a.undo, a.start))


if __name__ == "__main__":
    main()
