"""Run the authorization sidecar: `python server.py --help` lists the flags (the same as `authz serve`)."""

from authz.server.config import main

raise SystemExit(main())
