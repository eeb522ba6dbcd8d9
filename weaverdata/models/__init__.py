"""Models the pipelines run: tiny, randomly initialised stand-ins built locally for tests and demos
(`weaverdata.models.tiny`), and the loaders that the stages use."""
