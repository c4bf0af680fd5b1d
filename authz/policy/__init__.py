"""The IAM policy language: strict parsing, validation, and compiled matchers. Pure: no I/O, no clock."""

from .errors import AuthzError, LimitError, PolicyError, Problem, RequestError
from .model import Policy, PolicyType, Statement, compile_policy

__all__ = ["AuthzError", "LimitError", "PolicyError", "Problem", "RequestError", "Policy", "PolicyType",
           "Statement", "compile_policy"]
