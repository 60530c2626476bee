import pytest

from tests.bookings.providers import RecordingProvider


@pytest.fixture
def recording_provider(settings):
    RecordingProvider.reset()
    settings.PAYMENT_PROVIDER = "tests.bookings.providers.RecordingProvider"
    return RecordingProvider
