import pytest

from tests.profiles.factories import family


@pytest.fixture
def tree(tenant):
    return family(tenant)
