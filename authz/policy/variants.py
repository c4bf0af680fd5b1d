"""Variants: the values of one context key given under several spellings, a tuple subclass mypyc cannot compile.

It lives apart from conditions.py, which `make native` compiles (authz/native.py): a compiled module cannot
define a subclass of tuple.
"""


class Variants(tuple):  # type: ignore[type-arg]
    """Values of one key given under several spellings (e.g. tags `EC2` and `ec2`, spec 6)."""
