"""Django's message middleware, building its storage only for a request that uses it.

Django's ``MessageMiddleware`` builds the message storage (a cookie storage and a session
storage behind it) for every request. Only the admin's pages add or show messages; an API
request never does, and building the storage cost about a twentieth of an authenticated API
request's CPU (docs/performance.md, "Where the floor goes"). Here the storage is built on first
use, and a response whose request never used it has nothing to store, as with Django's.
"""

from django.contrib.messages.middleware import MessageMiddleware
from django.contrib.messages.storage import default_storage
from django.utils.functional import SimpleLazyObject, empty


class LazyMessageMiddleware(MessageMiddleware):
    def process_request(self, request):
        request._messages = SimpleLazyObject(lambda: default_storage(request))

    def process_response(self, request, response):
        storage = getattr(request, "_messages", None)
        if type(storage) is SimpleLazyObject and storage._wrapped is empty:
            return response  # never added to, never read: nothing to store or to clear
        return super().process_response(request, response)
