"""Named limits of the policy language (IAM, STS and Organizations quotas, spec section 8)."""

from __future__ import annotations

# Document sizes. IAM measures identity/resource/trust/session policies without white space;
# Organizations (SCP/RCP) counts every character.
MAX_MANAGED_POLICY_CHARS = 6_144
MAX_INLINE_USER_CHARS = 2_048          # aggregate of a user's inline policies
MAX_INLINE_GROUP_CHARS = 5_120         # aggregate of a group's inline policies
MAX_INLINE_ROLE_CHARS = 10_240         # aggregate of a role's inline policies
MAX_TRUST_POLICY_CHARS = 2_048         # default quota (adjustable at AWS up to 4,096/8,192)
MAX_SESSION_POLICY_CHARS = 2_048
MAX_SCP_CHARS = 5_120
MAX_RCP_CHARS = 5_120
MAX_RESOURCE_POLICY_CHARS = 20_480     # resource policies are service specific; this is a generous cap
MAX_POLICY_TEXT_CHARS = 131_072        # IAM API: any policy-document string parameter

# Structural limits that protect the parser (not AWS quotas: AWS never gets this far).
MAX_JSON_DEPTH = 32
MAX_STATEMENTS = 1_000
MAX_LIST_ITEMS = 2_000                 # entries in one Action/Resource/Principal/value list
MAX_PATTERN_CHARS = 10_240             # one action/resource/condition pattern

# Attachments and counts (spec 8).
MAX_MANAGED_POLICIES_PER_USER = 20
MAX_MANAGED_POLICIES_PER_ROLE = 25
MAX_MANAGED_POLICIES_PER_GROUP = 10
MAX_GROUPS_PER_USER = 10
MAX_POLICY_VERSIONS = 5
MAX_SESSION_POLICY_ARNS = 10
MAX_TAGS_PER_PRINCIPAL = 50
MAX_SESSION_TAGS = 50
MAX_TAG_KEY_CHARS = 128
MAX_TAG_VALUE_CHARS = 256

# Names (spec 8).
MAX_USER_OR_ROLE_NAME = 64
MAX_GROUP_OR_POLICY_NAME = 128
MAX_PATH_CHARS = 512
MIN_SESSION_NAME = 2
MAX_SESSION_NAME = 64
MIN_SESSION_SECONDS = 900
MAX_SESSION_SECONDS = 43_200
DEFAULT_SESSION_SECONDS = 3_600

# Size limit per policy type, and whether white space counts (spec 8).
SIZE_LIMITS: dict[str, tuple[int, bool]] = {
    # type: (max characters, white space counts)
    "identity": (MAX_INLINE_ROLE_CHARS, False),   # the largest identity limit; stricter ones apply where the kind is known
    "managed": (MAX_MANAGED_POLICY_CHARS, False),
    "aws-managed": (MAX_POLICY_TEXT_CHARS, False),   # AWS managed policies are not bound by customer quotas
    "boundary": (MAX_MANAGED_POLICY_CHARS, False),
    "inline-user": (MAX_INLINE_USER_CHARS, False),
    "inline-group": (MAX_INLINE_GROUP_CHARS, False),
    "inline-role": (MAX_INLINE_ROLE_CHARS, False),
    "trust": (MAX_TRUST_POLICY_CHARS, False),
    "session": (MAX_SESSION_POLICY_CHARS, False),
    "resource": (MAX_RESOURCE_POLICY_CHARS, False),
    "scp": (MAX_SCP_CHARS, True),
    "rcp": (MAX_RCP_CHARS, True),
}
