"""The framework's floor: what one authenticated DRF request costs before any guarded work.

``GET /api/t/<tenant>/`` resolves the token, the membership and the tenant and answers the
tenant: the same authentication, tenancy and rendering every guarded endpoint pays, and one
trivial read. Each operation's server CPU per HTTP attempt is read against this one's.
"""

NAME = "framework_floor"
CASE = "floor"


class FrameworkFloor:
    name = NAME

    def __init__(self, ctx):
        self.ctx = ctx

    def http(self, t, k):
        return f"/api/t/{self.ctx.slug}/", None, True  # no body: a GET
