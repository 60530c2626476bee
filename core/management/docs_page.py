"""Commands that print a page of docs/ generated from the code (a test keeps each page equal to it)."""

from django.core.management.base import BaseCommand


def page_command(render, help_text):
    """A command class printing ``render()``, the page, as it is to be saved."""

    class Command(BaseCommand):
        help = help_text

        def handle(self, *args, **options):
            self.stdout.write(render(), ending="")

    return Command
