"""`weaverdata inspect`: an offline HTML report of an output folder (see build.py)."""
