"""`make serve` (gunicorn, DEBUG off) serves the admin's and Swagger UI's static files itself."""

from django.core.management import call_command
from django.test import Client


def test_collected_static_files_are_served_with_debug_off(settings, tmp_path):
    settings.DEBUG = False
    settings.STATIC_ROOT = tmp_path / "static"
    call_command("collectstatic", "--noinput", verbosity=0)
    client = Client()  # a new handler: the static middleware reads STATIC_ROOT when it starts
    for path in ["/static/admin/css/base.css", "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui.css"]:
        response = client.get(path)
        assert response.status_code == 200, path
        assert b"".join(response.streaming_content)
