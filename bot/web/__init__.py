"""HTTP: webhooks and health; each view verifies, parses, calls one service and answers."""

from werkzeug.routing import BaseConverter

ROW_ID_MAX = 2**31 - 1  # our id columns are INTEGER: a larger id names no row (404, not a database overflow)


class RowIdConverter(BaseConverter):
    """`<id:name>` in a route: a row id. Digits that no row can have (0, or past ROW_ID_MAX) become 0, which the
    view finds no row for: 404 whatever the method (refusing them here would make other methods' routes
    answer 405)."""

    regex = r"\d+"

    def to_python(self, value: str) -> int:
        number = int(value) if len(value) <= len(str(ROW_ID_MAX)) else 0
        return number if number <= ROW_ID_MAX else 0

    def to_url(self, value: object) -> str:
        return str(value)


def whole_number(raw: str | None, top: int) -> int | None:
    """A query parameter that must be a whole number from 1 to `top` (ASCII digits only), else None."""
    raw = (raw or "").strip()
    if not (raw.isascii() and raw.isdigit() and len(raw) <= len(str(top))):
        return None
    value = int(raw)
    return value if 1 <= value <= top else None
