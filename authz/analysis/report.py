"""`authz access who-can|what|diff`: the arguments, the readable tables and the JSON output."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from ..store.errors import StoreError
from .classes import ClassLimit
from .engine import KINESISVIDEO_ACTIONS, Analyzer, canonical_action, load
from .model import Access, AccessDiff, WhoCan

MAX_TABLE_CELL = 100      # characters of one table cell; the JSON output is never shortened


def add_parser(sub: Any) -> None:
    """Add `access` and its three commands to the `authz` sub-parsers."""
    p = sub.add_parser("access", help="analyse access in a bundle: who can, what a principal can, what a change allows",
                       description="Access analysis on the decision engine itself, offline (docs/analysis.md). "
                                   "Answers hold for every ARN (the resource space is split into the classes the "
                                   "policies' patterns define) and for every request context (`conditional` "
                                   "marks access that depends on the context).")
    acc = p.add_subparsers(dest="access_command", metavar="COMMAND")
    q = acc.add_parser("who-can", help="every principal that can be allowed an action on a resource",
                       epilog="example: authz access who-can --bundle examples/bundle --action kinesisvideo:PutMedia "
                              "--resource arn:aws:kinesisvideo:us-west-2:123456789012:stream/shared_stream/"
                              "0123456789014")
    q.add_argument("--bundle", required=True, metavar="DIR", help="the bundle directory (as for authz serve)")
    q.add_argument("--action", required=True, help="service:Action, e.g. kinesisvideo:PutMedia")
    q.add_argument("--resource", required=True, help="the resource ARN")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q = acc.add_parser("what", help="what a principal is allowed: actions, resource patterns, the denies cutting in",
                       epilog="example: authz access what --bundle examples/bundle "
                              "--principal arn:aws:iam::123456789012:user/camera")
    q.add_argument("--bundle", required=True, metavar="DIR", help="the bundle directory (as for authz serve)")
    q.add_argument("--principal", required=True,
                   help="a user, role (its sessions, no session policy) or account root ARN, or '*' (anonymous)")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q = acc.add_parser("diff", help="the access NEW allows and OLD did not, and the reverse",
                       description="Exit status: 0 (also when access only shrinks), 1 with --fail-on-new-access when "
                                   "NEW allows anything OLD did not (including conditional -> unconditional), 2 bad "
                                   "usage or a bundle that does not load.",
                       epilog="example (CI): authz access diff base/bundle bundle --fail-on-new-access")
    q.add_argument("old", metavar="OLD_DIR", help="the bundle as it is")
    q.add_argument("new", metavar="NEW_DIR", help="the bundle as proposed")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.add_argument("--fail-on-new-access", action="store_true", help="exit 1 when NEW allows anything OLD did not")
    p.set_defaults(access_parser=p)


def _load(directory: str, what: str) -> Analyzer:
    path = Path(directory)
    if not path.is_dir():
        raise _Usage(f"{what} {directory}: not a directory (name a bundle directory)")
    try:
        return Analyzer(load(path))
    except StoreError as exc:
        raise _Usage(f"{what} {directory}: the bundle did not load: {exc}") from None


class _Usage(Exception):
    pass


def run(args: argparse.Namespace, stdout: TextIO) -> int:
    command = getattr(args, "access_command", None)
    if command is None:
        args.access_parser.print_help(stdout)
        return 2
    try:
        if command == "who-can":
            result = _load(args.bundle, "--bundle").who_can(canonical_action(args.action), args.resource)
            stdout.write(json.dumps(result.as_json(), indent=2) + "\n" if args.json else who_can_table(result))
            return 0
        if command == "what":
            access = _load(args.bundle, "--bundle").access_of(args.principal)
            if not access.known:
                print(f"authz access what: {args.principal}: the bundle has no such principal (give a user, role or "
                      "account root ARN of an account in the bundle)", file=sys.stderr)
                return 2
            stdout.write(json.dumps(access.as_json(), indent=2) + "\n" if args.json else access_table(access))
            return 0
        from .diffing import access_diff

        result_diff = access_diff(_load(args.old, "OLD_DIR"), _load(args.new, "NEW_DIR"))
        stdout.write(json.dumps(result_diff.as_json(), indent=2) + "\n" if args.json else diff_table(result_diff))
        return 1 if args.fail_on_new_access and result_diff.grants_new_access else 0
    except _Usage as exc:
        print(f"authz access {command}: {exc}", file=sys.stderr)
        return 2
    except ClassLimit as exc:
        print(f"authz access {command}: {exc}", file=sys.stderr)
        return 2


def _cell(text: str) -> str:
    return text if len(text) <= MAX_TABLE_CELL else text[:MAX_TABLE_CELL - 3] + "..."


def _table(header: list[str], rows: list[list[str]]) -> str:
    cells = [[_cell(c) for c in row] for row in rows]
    widths = [max([len(header[i]), *(len(r[i]) for r in cells)]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines) + "\n"


def who_can_table(result: WhoCan) -> str:
    head = f"who can {result.action} on {result.resource}\n"
    if result.owner_root:
        head += f"(the owning account's root, {result.owner_root}, always can; not listed)\n"
    if not result.principals:
        return head + "nobody\n"
    rows = [[r.principal, r.kind, " -> ".join(r.via) or "-",
             ("if " + ", ".join(r.conditions)) if r.conditional else "always"] for r in result.principals]
    return head + _table(["PRINCIPAL", "KIND", "VIA (roles assumed)", "WHEN"], rows)


def access_table(access: Access) -> str:
    head = f"what {access.principal} ({access.kind}) is allowed\n"
    if not access.grants:
        return head + "nothing\n"
    rows = [[_actions_text(g.actions), ", ".join(g.resources), ", ".join(g.denied) or "-",
             ("if " + ", ".join(g.conditions)) if g.conditional else "always"] for g in access.grants]
    return head + _table(["ACTIONS", "RESOURCES", "EXCEPT (denied)", "WHEN"], rows)


def _actions_text(actions: tuple[str, ...]) -> str:
    if set(KINESISVIDEO_ACTIONS) <= set(actions):
        rest = [a for a in actions if a not in KINESISVIDEO_ACTIONS]
        return ", ".join([f"kinesisvideo:* (all {len(KINESISVIDEO_ACTIONS)})", *rest])
    return ", ".join(actions)


def diff_table(result: AccessDiff) -> str:
    out = []
    for title, changes in (("newly allowed", result.added), ("no longer allowed", result.removed)):
        if not changes:
            out.append(f"{title}: nothing\n")
            continue
        rows = [[c.principal, c.action, c.resource, f"{c.old.label} -> {c.new.label}"] for c in changes]
        out.append(f"{title}: {len(changes)}\n" + _table(["PRINCIPAL", "ACTION", "RESOURCE (one of its class)",
                                                          "CHANGE"], rows))
    return "".join(out)
