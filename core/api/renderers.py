from rest_framework.renderers import JSONRenderer


class SafeJSONRenderer(JSONRenderer):
    """DRF's JSON renderer, readable UTF-8 output, but never a 500 on text that is not valid Unicode.

    A validation message may quote the client's input back; a lone surrogate in
    it ("\\ud800") cannot be encoded as UTF-8. Such a body is sent \\u-escaped instead.
    """

    def render(self, data, accepted_media_type=None, renderer_context=None):
        try:
            return super().render(data, accepted_media_type, renderer_context)
        except UnicodeEncodeError:
            self.ensure_ascii = True
            try:
                return super().render(data, accepted_media_type, renderer_context)
            finally:
                del self.ensure_ascii
