"""WSGI entry point (gunicorn config.wsgi)."""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django.setup(set_prefix=False)  # what django.core.wsgi.get_wsgi_application does, with our handler

from core.checks import refuse_unsafe_production  # noqa: E402 - needs the app registry loaded
from core.wsgi import Handler  # noqa: E402

application = Handler()  # Django's, a charset it cannot decode with a 400 (core/wsgi.py)

refuse_unsafe_production()  # DEBUG off with development secrets or the sandbox provider: do not serve
