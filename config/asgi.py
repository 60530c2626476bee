"""ASGI entry point."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
application = get_asgi_application()

from core.checks import refuse_unsafe_production  # noqa: E402 - needs the app registry loaded

refuse_unsafe_production()  # DEBUG off with development secrets or the sandbox provider: do not serve
