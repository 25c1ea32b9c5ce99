from .cli import daemon_main

raise SystemExit(daemon_main())
