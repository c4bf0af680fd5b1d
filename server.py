"""Run the authorization sidecar: `python server.py --help` lists the flags (the same as `authz serve`)."""

from authz.server.serve import main

raise SystemExit(main())
