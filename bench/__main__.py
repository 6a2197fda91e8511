"""C{python -m bench}: see L{bench.cli}."""

if __name__ == "__main__":
    from bench.cli import main

    raise SystemExit(main())
