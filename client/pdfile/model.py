"""The values a PDFile becomes: :class:`PDFile`, its parts, and the errors that name its lines.

Plain frozen dataclasses: nothing here reads text. Secrets (AUTHENTICATE PASSWORD and API_KEY, a
PROVIDER's secret keys) never appear in a repr or a ``to_dict()``. The format is in ``docs/pdfile.md``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field
from typing import Final, Literal

from client.byo.connection import REDACTED, redact
from core.errors import InvalidInput
from core.manifest import MinimumRequirements

__all__ = [
    "COMPRESS_LEVELS",
    "OPERATIONS",
    "Authentication",
    "Diagnostic",
    "Operation",
    "PDFile",
    "PDFileError",
    "ParseResult",
    "Provider",
]

Operation = Literal["push", "pull", "list", "import", "import-vm"]
OPERATIONS: Final[tuple[Operation, ...]] = ("push", "pull", "list", "import", "import-vm")
#: COMPRESS_PACK_LEVEL names and the zstd level each one means (None: pdcat's default level).
COMPRESS_LEVELS: Final[Mapping[str, int | None]] = {
    "best_speed": 1,
    "balanced": 3,
    "default": None,
    "best_compression": 19,
    "no_compression": None,
}
_SHOWN_PROBLEMS: Final = 5


@dataclass(frozen=True)
class Diagnostic:
    """One problem or warning; ``line`` is 1-based in the file as written, None for the whole file."""

    line: int | None
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line is not None else self.message


class PDFileError(InvalidInput):
    """Every problem found in a PDFile; the message is one line for the CLI.

    Problems come in the order found: bad lines top to bottom, then what is wrong across lines
    (conflicts, half-given credentials), then what is missing. ``line`` is the first one's.
    """

    def __init__(self, problems: Collection[Diagnostic], source: str | None = None) -> None:
        ordered = tuple(problems)
        if not ordered:
            raise ValueError("PDFileError needs at least one problem")
        self.problems: tuple[Diagnostic, ...] = ordered
        self.line: int | None = ordered[0].line
        self.source = source
        body = "; ".join(str(d) for d in ordered[:_SHOWN_PROBLEMS])
        if len(ordered) > _SHOWN_PROBLEMS:
            body += f"; and {len(ordered) - _SHOWN_PROBLEMS} more"
        super().__init__(f"{source}: {body}" if source else body)


@dataclass(frozen=True)
class Authentication:
    """Credentials for the catalog. The repr never shows the password or the API key."""

    username: str | None = None
    password: str | None = None
    api_key: str | None = None

    def __repr__(self) -> str:
        shown = self.to_dict()
        return "Authentication(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    def to_dict(self) -> dict[str, str]:
        """Safe to print: secrets replaced by ``***``."""
        out: dict[str, str] = {}
        if self.username is not None:
            out["username"] = self.username
        if self.password is not None:
            out["password"] = REDACTED
        if self.api_key is not None:
            out["api_key"] = REDACTED
        return out


@dataclass(frozen=True)
class Provider:
    """Storage given by the PDFile, as the ``provider=NAME;key=value;…`` connection string.

    ``client.byo.connection`` owns the grammar: the PDFile assembles the string with it from
    PROVIDER lines, and checks it against the provider only when the storage is opened. The repr
    shows the provider name and keys with secret values masked.
    """

    name: str
    connection_string: str

    def redacted(self) -> str:
        shown = redact(self.connection_string)
        return shown if shown != REDACTED else f"provider={self.name};{REDACTED}"

    def __repr__(self) -> str:
        return f"Provider({self.redacted()!r})"

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "connection_string": self.redacted()}


@dataclass(frozen=True)
class PDFile:
    """A parsed, validated PDFile. ``None`` (or an empty tuple) means the file did not say."""

    operation: Operation
    server: str | None = None
    insecure: bool | None = None
    credentials: Authentication | None = None
    catalog_id: str | None = None
    version: str | None = None
    architecture: str | None = None
    description: str | None = None
    local_path: str | None = None
    destination: str | None = None
    machine_name: str | None = None
    owner: str | None = None
    start_after_pull: bool | None = None
    roles: tuple[str, ...] = ()
    claims: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    provider: Provider | None = None
    clone: bool | None = None
    clone_name: str | None = None
    clone_destination: str | None = None
    execute: tuple[str, ...] = ()
    minimum_requirements: MinimumRequirements | None = None
    compress_pack: bool | None = None
    compress_pack_level: str | None = None
    vm_type: str | None = None
    vm_size: int | None = None
    vm_remote_path: str | None = None
    is_compressed: bool | None = None
    force: bool | None = None
    #: keyword (``VERSION``, ``AUTHENTICATE PASSWORD``, ``PROVIDER bucket``…) -> line it was first given on
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def line_of(self, keyword: str) -> int | None:
        """Where a keyword was given, so later errors (a missing LOCAL_PATH folder…) can point at it."""
        return self.lines.get(keyword.upper()) or self.lines.get(keyword)

    def to_dict(self) -> dict[str, object]:
        """What the file said, JSON-ready and safe to print (secrets masked, unset fields left out)."""
        out: dict[str, object] = {}
        for name in self.__dataclass_fields__:
            if name == "lines":
                continue
            value = getattr(self, name)
            if value is None or value == ():
                continue
            if isinstance(value, Authentication | Provider):
                out[name] = value.to_dict()
            elif isinstance(value, MinimumRequirements):
                out[name] = {k: v for k, v in asdict(value).items() if v}
            elif isinstance(value, tuple):
                out[name] = list(value)
            else:
                out[name] = value
        return out


@dataclass(frozen=True)
class ParseResult:
    pdfile: PDFile
    warnings: tuple[Diagnostic, ...] = ()
