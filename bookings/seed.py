"""Demo data for this app, called by ``manage.py seed_demo`` inside its transaction. Must be idempotent."""


def seed_demo(tenant, *, admin, api_user):
    pass
