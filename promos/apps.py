from django.apps import AppConfig


class PromosConfig(AppConfig):
    name = "promos"
