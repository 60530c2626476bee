"""An output serializer's representation without building its fields on every request.

DRF builds a serializer's fields for each instance it makes (from the model's meta, deep-
copying the declared ones): on a guarded endpoint that was more CPU than the guard. An
output serializer keeps no per-request state once its fields are built (none of ours reads
the request or the context: no hyperlinks), so one instance per class serves every request.
"""

import functools


def represented(serializer_class, instance):
    """``serializer_class(instance).data``, from one instance of the class whose fields are built once."""
    return _shared(serializer_class).to_representation(instance)


@functools.cache
def _shared(serializer_class):
    serializer = serializer_class()
    _ = serializer.fields  # built here, once
    return serializer
