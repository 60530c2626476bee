from tests.bookings.conftest import recording_provider  # noqa: F401 - shared fixture
