"""The gateway's refusals: HTTP answers other than allow, raised by the mapping and by the ext_authz servicer.

Apart from mapping.py, which `make native` compiles (authz/native.py): the servicer subclasses HttpRefusal, and a
class the interpreter defines cannot subclass a compiled one.
"""


class HttpRefusal(Exception):
    """An HTTP answer other than allow: status, AWS error code, and a message that says what to fix."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class MappingError(HttpRefusal):
    """The request is refused before authorization (bad argument, unknown route, body too large)."""
