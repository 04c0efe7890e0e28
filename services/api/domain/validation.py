"""Field-level checks shared by every declaration: names, labels, env, durations, text.

Each check appends a `Violation` at the field path it is given and returns whether the
value passed, so a validator can walk a whole declaration and report every problem at
once. The rules follow what the values end up being: names become Kubernetes object
names, namespaces and NATS subject tokens (DNS labels); labels become Kubernetes labels;
env keys become process environment variables.

Two Kubernetes rules are stricter than a DNS label, and are checked here so that the
user hears of them when declaring, not from a cluster's 422 at deploy time (rules of
k8s.io/apimachinery `pkg/util/validation/validation.go`): a port name is an IANA service
name (IsValidPortName: at most 15 characters, at least one letter, no '-' at either end or
twice in a row), and a service's name names a Kubernetes Service, a DNS-1035 label
(IsDNS1035Label: it starts with a letter). Both are checks for new commands only: what is
already in the log still folds.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from google.protobuf import descriptor, duration_pb2
from google.protobuf.message import Message

from services.api.domain.errors import Problems, quote

DNS_LABEL: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*")
_LABEL_NAME: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?")
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,255}")
_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

MAX_DESCRIPTION: Final = 1024
MAX_REASON: Final = 1024
MAX_VALUE: Final = 8192
MAX_DURATION_SECONDS: Final = 315_576_000_000
"""The protobuf Duration range (10,000 years)."""

DNS_LABEL_RULE: Final = (
    "use lower-case letters, digits and '-', start and end with a letter or digit, at most 63 characters"
)
_DNS1035_LABEL: Final = re.compile(r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?")
_PORT_NAME: Final = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
PORT_NAME_RULE: Final = (
    "use at most 15 lower-case letters, digits and '-', with at least one letter, not starting or ending "
    "with '-' and without '--' (Kubernetes requires an IANA service name)"
)
SERVICE_NAME_RULE: Final = (
    "start with a lower-case letter (a service's name names a Kubernetes Service, a DNS-1035 label); "
    "services declared before keep their names"
)


def q(value: object) -> str:
    """A value quoted for an error message: control characters escaped, a long one cut
    (`errors.quote`), so no message echoes a huge value whole."""
    return quote(value)


def is_dns_label(value: str) -> bool:
    return DNS_LABEL.fullmatch(value) is not None


def check_name(problems: Problems, field: str, value: str, *, what: str = "name") -> bool:
    """A required DNS label (application, service, channel, runtime … names)."""
    if not value:
        problems.add(field, f"{what} is required ({DNS_LABEL_RULE})")
        return False
    if not is_dns_label(value):
        problems.add(field, f"{q(value)} is not a valid {what}: {DNS_LABEL_RULE}")
        return False
    return True


def is_dns1035_label(value: str) -> bool:
    return _DNS1035_LABEL.fullmatch(value) is not None


def is_port_name(value: str) -> bool:
    """IANA_SVC_NAME as Kubernetes checks it (IsValidPortName)."""
    return len(value) <= 15 and _PORT_NAME.fullmatch(value) is not None and any(c.isalpha() for c in value)


def check_port_name(problems: Problems, field: str, value: str) -> bool:
    """An optional port name (empty = unnamed) that Kubernetes accepts for a container port."""
    if value and not is_port_name(value):
        problems.add(field, f"{q(value)} is not a valid port name: {PORT_NAME_RULE}")
        return False
    return True


def check_new_service_name(problems: Problems, field: str, value: str) -> bool:
    """A new service's name (already a DNS label) must also start with a letter."""
    if is_dns_label(value) and not is_dns1035_label(value):
        problems.add(field, f"{q(value)} is not a valid name for a new service: {SERVICE_NAME_RULE}")
        return False
    return True


def check_identifier(problems: Problems, field: str, value: str, *, what: str) -> bool:
    """A template identifier (parameter names: used as `{{.Params.<name>}}`)."""
    if _IDENTIFIER.fullmatch(value) is None:
        problems.add(
            field,
            f"{q(value)} is not a valid {what}: use letters, digits and '_', starting with a "
            "letter or '_', at most 63 characters",
        )
        return False
    return True


def _label_key_problem(key: str) -> str | None:
    prefix, slash, name = key.rpartition("/")
    if not name:
        return "the name part after the optional 'prefix/' is empty"
    if _LABEL_NAME.fullmatch(name) is None:
        return (
            "the name part must be at most 63 characters of letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )
    if slash and (len(prefix) > 253 or _DNS_SUBDOMAIN.fullmatch(prefix) is None):
        return "the prefix before '/' must be a lower-case DNS subdomain (e.g. convoy.dev)"
    return None


def check_labels(problems: Problems, field: str, labels: Mapping[str, str]) -> bool:
    """Kubernetes label syntax: `[prefix/]name` keys, values empty or label-like."""
    ok = True
    for key in sorted(labels):
        problem = _label_key_problem(key)
        if problem is not None:
            problems.add(f"{field}[{q(key)}]", f"label key {q(key)} is invalid: {problem}")
            ok = False
        value = labels[key]
        if value and _LABEL_NAME.fullmatch(value) is None:
            problems.add(
                f"{field}[{q(key)}]",
                f"label value {q(value)} is invalid: at most 63 characters of letters, digits, "
                "'-', '_' or '.', starting and ending with a letter or digit (or empty)",
            )
            ok = False
    return ok


def check_env(problems: Problems, field: str, env: Mapping[str, str]) -> bool:
    ok = True
    for key in sorted(env):
        if _ENV_NAME.fullmatch(key) is None:
            problems.add(
                f"{field}[{q(key)}]",
                f"environment variable name {q(key)} is invalid: use letters, digits and '_', "
                "not starting with a digit",
            )
            ok = False
        if len(env[key]) > MAX_VALUE:
            problems.add(f"{field}[{q(key)}]", f"value is longer than {MAX_VALUE} characters")
            ok = False
    return ok


def check_text(problems: Problems, field: str, value: str, *, limit: int, required: bool = False) -> bool:
    """Free text (descriptions, reasons, comments): bounded, optionally required."""
    if required and not value.strip():
        problems.add(field, "required: say why (it is recorded in the audit log)")
        return False
    if len(value) > limit:
        problems.add(field, f"is {len(value)} characters; the limit is {limit}")
        return False
    return True


def check_duration(problems: Problems, field: str, owner: Message, name: str) -> bool:
    """An optional `google.protobuf.Duration` field of `owner`: valid and not negative."""
    if not owner.HasField(name):
        return True
    value: duration_pb2.Duration = getattr(owner, name)
    path = f"{field}.{name}" if field else name
    seconds_ok = -MAX_DURATION_SECONDS <= value.seconds <= MAX_DURATION_SECONDS
    in_range = seconds_ok and -999_999_999 <= value.nanos <= 999_999_999
    if not in_range:
        problems.add(path, "is out of the protobuf Duration range")
        return False
    if value.seconds < 0 or value.nanos < 0:
        problems.add(path, "must not be negative")
        return False
    return True


def check_argv(problems: Problems, field: str, argv: Sequence[str], *, required: bool) -> bool:
    """A command line as an argv list: the program (first element) must be non-empty."""
    if not argv:
        if required:
            problems.add(field, "a command is required (an argv list, e.g. [\"./deploy.sh\", \"--apply\"])")
        return not required
    if not argv[0].strip():
        problems.add(f"{field}[0]", "the program to run must not be empty")
        return False
    if any(len(arg) > MAX_VALUE for arg in argv):
        problems.add(field, f"an argument is longer than {MAX_VALUE} characters")
        return False
    return True


def check_enum(
    problems: Problems, field: str, value: int, allowed: Mapping[int, str], *, required: bool, what: str
) -> bool:
    """An enum value (proto3 enums are open: unknown numbers parse fine and must be refused)."""
    if value == 0 and not required:
        return True
    if value not in allowed:
        choices = ", ".join(allowed[v] for v in sorted(allowed))
        if value == 0:
            problems.add(field, f"a {what} is required: one of {choices}")
        else:
            problems.add(field, f"{value} is not a known {what}: use one of {choices}")
        return False
    return True


_CONTROL: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
"""Control characters no value may hold: NUL can reach no process (argv, environment and
paths end at it) and the others (escape sequences …) corrupt terminals and logs. Tab,
newline and carriage return are text."""
_CONTROL_NAMES: Final = {"\x00": "NUL", "\x1b": "ESC", "\x7f": "DEL"}


def check_characters(problems: Problems, message: Message, field: str = "") -> bool:
    """Every string anywhere in `message` (map keys and values, lists, nested messages)
    is free of control characters other than tab and newline: one walk, so no value that
    reaches a runtime — a parameter, an env value, an argument, a probe URL — is missed
    by a field-by-field check."""
    ok = True
    for fd, value in message.ListFields():
        path = f"{field}.{fd.name}" if field else fd.name
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            value_fd = fd.message_type.fields_by_name["value"]
            for key in sorted(value):
                at = f"{path}[{q(key)}]"
                ok &= _check_string(problems, at, key) if isinstance(key, str) else True
                if value_fd.type == descriptor.FieldDescriptor.TYPE_MESSAGE:
                    ok &= check_characters(problems, value[key], at)
                elif value_fd.type == descriptor.FieldDescriptor.TYPE_STRING:
                    ok &= _check_string(problems, at, value[key])
        elif fd.type == descriptor.FieldDescriptor.TYPE_STRING:
            items = value if fd.is_repeated else [value]
            for i, item in enumerate(items):
                at = f"{path}[{i}]" if fd.is_repeated else path
                ok &= _check_string(problems, at, item)
        elif fd.type == descriptor.FieldDescriptor.TYPE_MESSAGE:
            items = value if fd.is_repeated else [value]
            for i, item in enumerate(items):
                at = f"{path}[{i}]" if fd.is_repeated else path
                ok &= check_characters(problems, item, at)
    return ok


def _check_string(problems: Problems, field: str, value: str) -> bool:
    found = _CONTROL.search(value)
    if found is None:
        return True
    char = found.group()
    name = _CONTROL_NAMES.get(char, f"U+{ord(char):04X}")
    problems.add(
        field,
        f"holds a control character ({name}) at offset {found.start()}: values may not hold control characters "
        "other than tab and newline (they cannot reach a process, a manifest or a log intact)",
    )
    return False


def duplicates(values: Iterable[str]) -> list[str]:
    """Values that occur more than once, in first-repeat order."""
    seen: set[str] = set()
    repeated: list[str] = []
    for value in values:
        if value in seen and value not in repeated:
            repeated.append(value)
        seen.add(value)
    return repeated


def listing(names: Iterable[str], *, empty: str = "none") -> str:
    """`a, b, c` for error messages (sorted), or `empty`."""
    items = sorted(set(names))
    return ", ".join(items) if items else empty
