"""How long a FineTuneJob's or ModelServe's own name may be, and why.

Kubernetes accepts a 253-character name, but the operator names every child
`<name><suffix>` (`kubetune.operator.naming.child_name`) and labels it with the name, and a
Pod or Service name, like a label value, must fit in 63 characters. Past that `child_name`
falls back to a cut name plus a hash: it still works, but the children no longer read as
their owner's, and `kubectl get pods -l kubetune.dev/finetunejob=<name>` (what the README
tells users to run) is an invalid selector. So the CRD refuses, at `kubectl apply`, a name
whose children would need that fallback, and `check_name` says the same to code that sees
a name the API server never checked. tests/api ties these numbers to naming.py.
"""

from __future__ import annotations

import re

from .common import DNS_SUBDOMAIN_PATTERN

CHILD_NAME_MAX = 63
"""A Pod or Service name (DNS-1123 label) and a label value: at most 63 characters."""

OBJECT_NAME_MAX = 253
"""What the API server allows for any object's name (DNS-1123 subdomain)."""

WORKERS_MAX = 64
"""Ray Train workers per job: the head is rank 0, so worker pods are numbered 1 to 63."""

FINETUNEJOB_LONGEST_SUFFIX = f"-worker-{WORKERS_MAX - 1}"
MODELSERVE_LONGEST_SUFFIX = "-serve-config"
FINETUNEJOB_NAME_MAX = CHILD_NAME_MAX - len(FINETUNEJOB_LONGEST_SUFFIX)
MODELSERVE_NAME_MAX = CHILD_NAME_MAX - len(MODELSERVE_LONGEST_SUFFIX)

_SUBDOMAIN = re.compile(DNS_SUBDOMAIN_PATTERN)


def too_long_message(kind: str, limit: int, suffix: str) -> str:
    """The one sentence the CRD rule and `check_name` both give."""
    return (
        f"a {kind} name may be at most {limit} characters, so that the names of its "
        f"children (up to <name>{suffix}) fit in {CHILD_NAME_MAX}"
    )


def name_problems(kind: str, name: str | None, limit: int, suffix: str) -> list[str]:
    """What is wrong with `name` as the name of a `kind`, each naming metadata.name.

    The first two mirror the checks the API server makes of every object's name, whatever
    its CRD says; the last is the CRD's root rule."""
    if not name:
        return ["metadata.name: Required value"]
    problems = []
    if len(name) > OBJECT_NAME_MAX:
        problems.append(f"metadata.name: must be no more than {OBJECT_NAME_MAX} characters")
    if not _SUBDOMAIN.fullmatch(name):
        problems.append(
            "metadata.name: a lowercase RFC 1123 subdomain must consist of lower case "
            "alphanumeric characters, '-' or '.', and must start and end with an "
            "alphanumeric character"
        )
    if len(name) > limit:
        problems.append(f"metadata.name: {too_long_message(kind, limit, suffix)}")
    return problems
