"""Thin shim so `python cli.py ...` works from a checkout; the app lives in weaverdata/cli.py."""

from weaverdata.cli import main

if __name__ == "__main__":
    main()
