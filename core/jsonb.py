"""Values PostgreSQL's jsonb (and text) accepts, from any decoded JSON."""


def jsonb_safe(value):
    """``value`` (decoded JSON) with what jsonb refuses replaced, in strings and keys alike: NUL by
    U+FFFD, a lone surrogate by "?". For what we store as it came (an API answer quoting a client's
    input back, a signed payment event): storing it can never fail."""
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode().replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {jsonb_safe(key): jsonb_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [jsonb_safe(item) for item in value]
    return value
