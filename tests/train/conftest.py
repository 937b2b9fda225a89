from tests.ingest.conftest import ingest_settings, movielens_sample  # noqa: F401 - shared fixtures
