import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: a slower fault test (still part of the default run)")


@pytest.fixture(scope="module")
def store(ch, chdb_dsn):
    from .helpers import Store

    s = Store(ch, chdb_dsn)
    yield s
    s.drop()
