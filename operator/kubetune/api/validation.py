"""Turn pydantic errors into one message that names each bad field by its wire path."""

from __future__ import annotations

from pydantic import BaseModel, ValidationError


class SpecError(ValueError):
    """A spec the operator refuses; the message names every offending field."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


def _field_path(prefix: str, loc: tuple) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in ("function-after", "function-before") or str(part).startswith(
            ("function-", "constrained-")
        ):
            continue
        else:
            path += f".{part}" if path else str(part)
    return path or prefix


def parse_spec(model: type[BaseModel], body: dict | None, prefix: str = "spec") -> BaseModel:
    """Validate `body` against `model`; raise SpecError naming `spec.a.b[i]` on failure."""
    try:
        return model.model_validate(body or {})
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            loc = tuple(p for p in err["loc"] if not str(p).startswith(("function-", "union")))
            # pydantic reports union branches by type name (e.g. `str`); drop those too.
            loc = tuple(p for p in loc if p not in {"str", "int", "float", "bool", "list", "dict"})
            message = err["msg"].removeprefix("Value error, ")
            problems.append(f"{_field_path(prefix, loc)}: {message}")
        raise SpecError(problems) from None
