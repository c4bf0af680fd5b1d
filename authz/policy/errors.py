"""The error tree of the policy language: problems located by JSON path."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding of the validator: where (a JSON path such as `$.Statement[0].Effect`) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}


class AuthzError(Exception):
    """Root of every error this package raises on purpose."""


class PolicyError(AuthzError):
    """A policy document was rejected; `problems` lists every reason."""

    def __init__(self, problems: list[Problem] | tuple[Problem, ...], name: str = "") -> None:
        self.problems = tuple(problems)
        self.name = name
        head = f"policy {name!r} is invalid" if name else "policy is invalid"
        detail = "; ".join(str(p) for p in self.problems[:5])
        more = f" (+{len(self.problems) - 5} more)" if len(self.problems) > 5 else ""
        super().__init__(f"{head}: {detail}{more}")


class RequestError(AuthzError):
    """An authorization request is malformed; `field` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class LimitError(AuthzError):
    """Input exceeds a named limit; the message names the limit and its value."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")
