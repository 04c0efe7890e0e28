"""The apiserver's validation primitives, with its exact messages, and its field errors.

Ported from k8s.io/apimachinery (the same rules every kube-apiserver applies):

- `pkg/util/validation/validation.go`: IsDNS1123Label, IsDNS1123Subdomain, IsDNS1035Label,
  IsValidPortName (IANA_SVC_NAME), IsValidPortNum, IsEnvVarName, RegexError, MaxLenError;
- `pkg/api/validate/content/kube.go`: IsLabelKey (a "qualified name"), IsLabelValue — their
  MaxLenError (`content/errors.go`) says "bytes" where the older one says "characters";
- `pkg/util/validation/field/errors.go`: how a field error reads (`ErrorBody`: "Invalid value:
  \"x\": detail", "Required value", "Duplicate value: …", "Unsupported value: …: supported
  values: …", "Too long: may not be more than N bytes") and which `reason` it carries.

Each check returns the list of messages (empty = valid), like the Go functions, so callers
can turn each into one cause. A cause is (field path, reason, message), what
`errors.invalid` puts in a 422 Status's `details.causes`.
"""

from __future__ import annotations

import json
import re
from typing import Any

Cause = tuple[str, str, str]

_DNS1123_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN_FMT = _DNS1123_LABEL_FMT + "(\\." + _DNS1123_LABEL_FMT + ")*"
_DNS1035_LABEL_FMT = "[a-z]([-a-z0-9]*[a-z0-9])?"
_LABEL_KEY_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_VALUE_FMT = "(" + _LABEL_KEY_FMT + ")?"
_ENV_VAR_NAME_FMT = "[-._a-zA-Z][-._a-zA-Z0-9]*"

_DNS1123_LABEL = re.compile(f"^{_DNS1123_LABEL_FMT}$")
_DNS1123_SUBDOMAIN = re.compile(f"^{_DNS1123_SUBDOMAIN_FMT}$")
_DNS1035_LABEL = re.compile(f"^{_DNS1035_LABEL_FMT}$")
_LABEL_KEY = re.compile(f"^{_LABEL_KEY_FMT}$")
_LABEL_VALUE = re.compile(f"^{_LABEL_VALUE_FMT}$")
_ENV_VAR_NAME = re.compile(f"^{_ENV_VAR_NAME_FMT}$")
_PORT_NAME_CHARSET = re.compile("^[-a-z0-9]+$")
_ONE_LETTER = re.compile("[a-z]")


def regex_error(message: str, fmt: str, *examples: str) -> str:
    """validation.RegexError (its odd double space before "or" included)."""
    if not examples:
        return f"{message} (regex used for validation is '{fmt}')"
    text = message + " (e.g. "
    for i, example in enumerate(examples):
        if i:
            text += " or "
        text += f"'{example}', "
    return text + f"regex used for validation is '{fmt}')"


def max_len_error(length: int, *, unit: str = "characters") -> str:
    return f"must be no more than {length} {unit}"


def dns1123_label(value: str) -> list[str]:
    """IsDNS1123Label: namespaces, container names, Service port names."""
    errs: list[str] = []
    if len(value) > 63:
        errs.append(max_len_error(63))
    if not _DNS1123_LABEL.match(value):
        if _DNS1123_SUBDOMAIN.match(value):
            errs.append("must not contain dots")
        else:
            errs.append(regex_error(
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
                "start and end with an alphanumeric character", _DNS1123_LABEL_FMT, "my-name", "123-abc",
            ))
    return errs


def dns1123_subdomain(value: str) -> list[str]:
    """IsDNS1123Subdomain: Deployment, Pod, ConfigMap, Secret names (NameIsDNSSubdomain)."""
    errs: list[str] = []
    if len(value) > 253:
        errs.append(max_len_error(253))
    if not _DNS1123_SUBDOMAIN.match(value):
        errs.append(regex_error(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and "
            "must start and end with an alphanumeric character", _DNS1123_SUBDOMAIN_FMT, "example.com",
        ))
    return errs


def dns1035_label(value: str) -> list[str]:
    """IsDNS1035Label: Service names (core validation's ValidateServiceName = NameIsDNS1035Label)."""
    errs: list[str] = []
    if len(value) > 63:
        errs.append(max_len_error(63))
    if not _DNS1035_LABEL.match(value):
        errs.append(regex_error(
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic "
            "character, and end with an alphanumeric character", _DNS1035_LABEL_FMT, "my-name", "abc-123",
        ))
    return errs


def port_name(value: str) -> list[str]:
    """IsValidPortName (RFC 6335 IANA_SVC_NAME, lower case only): container port names, and a
    Service's or probe's port given by name."""
    errs: list[str] = []
    if len(value) > 15:
        errs.append(max_len_error(15))
    if not _PORT_NAME_CHARSET.match(value):
        errs.append("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
    if not _ONE_LETTER.search(value):
        errs.append("must contain at least one letter (a-z)")
    if "--" in value:
        errs.append("must not contain consecutive hyphens")
    if value and (value[0] == "-" or value[-1] == "-"):
        errs.append("must not begin or end with a hyphen")
    return errs


def port_number(value: Any) -> list[str]:
    """IsValidPortNum."""
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535:
        return []
    return ["must be between 1 and 65535, inclusive"]


def label_key(value: str) -> list[str]:
    """content.IsLabelKey (IsQualifiedName): label keys, and annotation keys lower-cased."""
    errs: list[str] = []
    parts = value.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            errs.append("prefix part must be non-empty")
        else:
            errs.extend("prefix part " + m for m in dns1123_subdomain(prefix))
    else:
        return [
            "a valid label key " + regex_error(
                "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
                "alphanumeric character", _LABEL_KEY_FMT, "MyName", "my.name", "123-abc",
            ) + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
        ]
    if not name:
        errs.append("name part must be non-empty")
    elif len(name) > 63:
        errs.append("name part " + max_len_error(63, unit="bytes"))
    if not _LABEL_KEY.match(name):
        errs.append("name part " + regex_error(
            "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
            "alphanumeric character", _LABEL_KEY_FMT, "MyName", "my.name", "123-abc",
        ))
    return errs


def label_value(value: str) -> list[str]:
    """content.IsLabelValue."""
    errs: list[str] = []
    if len(value) > 63:
        errs.append(max_len_error(63, unit="bytes"))
    if not _LABEL_VALUE.match(value):
        errs.append(regex_error(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and "
            "must start and end with an alphanumeric character", _LABEL_VALUE_FMT, "MyValue", "my_value", "12345",
        ))
    return errs


def env_var_name(value: str) -> list[str]:
    """IsEnvVarName (the rule of v1.31, before RelaxedEnvironmentVariableValidation became the default)."""
    errs: list[str] = []
    if not _ENV_VAR_NAME.match(value):
        errs.append(regex_error(
            "a valid environment variable name must consist of alphabetic characters, digits, '_', '-', or '.', "
            "and must not start with a digit", _ENV_VAR_NAME_FMT, "my.env-name", "MY_ENV.NAME", "MyEnvName1",
        ))
    if value == ".":
        errs.append("must not be '.'")
    elif value == "..":
        errs.append("must not be '..'")
    elif value.startswith(".."):
        errs.append("must not start with '..'")
    return errs


# ---- field errors (field.Error's ErrorBody and Type) ------------------------------------------


def show(value: Any) -> str:
    """How ErrorBody prints a bad value: numbers and booleans bare, strings Go-quoted, the rest as JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    return json.dumps(value, separators=(",", ":"))


def invalid(path: str, value: Any, detail: str) -> Cause:
    return (path, "FieldValueInvalid", f"Invalid value: {show(value)}: {detail}")


def required(path: str, detail: str = "") -> Cause:
    return (path, "FieldValueRequired", "Required value" + (f": {detail}" if detail else ""))


def duplicate(path: str, value: Any) -> Cause:
    return (path, "FieldValueDuplicate", f"Duplicate value: {show(value)}")


def not_supported(path: str, value: Any, supported: list[str]) -> Cause:
    detail = ", ".join(json.dumps(v) for v in supported)
    return (path, "FieldValueNotSupported", f"Unsupported value: {show(value)}: supported values: {detail}")


def too_long(path: str, limit: int) -> Cause:
    return (path, "FieldValueTooLong", f"Too long: may not be more than {limit} bytes")


def each(path: str, value: Any, messages: list[str]) -> list[Cause]:
    """One FieldValueInvalid cause per message of a check (how the Go validators loop)."""
    return [invalid(path, value, m) for m in messages]


_CONFIG_KEY_FMT = r"[-._a-zA-Z0-9]+"
_CONFIG_KEY = re.compile(f"^{_CONFIG_KEY_FMT}$")


def config_key(value: str) -> list[str]:
    """IsConfigMapKey (a Secret's or ConfigMap's data key, and secretKeyRef.key)."""
    errs: list[str] = []
    if len(value) > 253:
        errs.append(max_len_error(253))
    if not _CONFIG_KEY.match(value):
        errs.append(regex_error(
            "a valid config key must consist of alphanumeric characters, '-', '_' or '.'", _CONFIG_KEY_FMT,
            "key.name", "KEY_NAME", "key-name",
        ))
    if value == ".":
        errs.append("must not be '.'")
    elif value == "..":
        errs.append("must not be '..'")
    elif value.startswith(".."):
        errs.append("must not start with '..'")
    return errs
