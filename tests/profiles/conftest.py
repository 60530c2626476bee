import pytest
from django.utils import translation

from tests.profiles.factories import family


@pytest.fixture
def tree(tenant):
    return family(tenant)


@pytest.fixture(autouse=True)
def no_language_left_behind():
    """LocaleMiddleware activates a request's language on the test's thread and leaves it there:
    reset it, so a test that ends with an Arabic request does not turn the next one's messages Arabic."""
    yield
    translation.deactivate()
