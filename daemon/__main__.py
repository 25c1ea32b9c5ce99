from .cli import daemon_main

if __name__ == "__main__":  # not when a spawned encode worker imports it
    raise SystemExit(daemon_main())
