"""Serializers used without building their fields on every request: answers and plain inputs.

DRF builds a serializer's fields for each instance it makes (from the model's meta, deep-
copying the declared ones): on a guarded endpoint that was more CPU than the guard. Turning
an instance into its answer, or a body into validated data, keeps no per-request state on
the serializer once its fields are built (none of ours reads the request or the context: no
hyperlinks, no instance), so one instance per class serves every request, in any thread.
"""

import functools


def represented(serializer_class, instance):
    """``serializer_class(instance).data``, from one instance of the class whose fields are built once."""
    return _shared(serializer_class).to_representation(instance)


def validated(serializer_class, data):
    """``serializer_class(data=data)``'s validated data, or its ValidationError (400) as ``is_valid`` raises it.

    For a body or query validated on its own (no instance to update, not partial).
    """
    return _shared(serializer_class).run_validation(data)


@functools.cache
def _shared(serializer_class):
    serializer = serializer_class()
    _ = serializer.fields  # built here, once
    return serializer
