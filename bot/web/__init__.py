"""HTTP: webhooks and health; each view verifies, parses, calls one service and answers."""

from werkzeug.routing import BaseConverter

from bot.keywords import whole_number

ROW_ID_MAX = 2**31 - 1  # our id columns are INTEGER: a larger id names no row (404, not a database overflow)
MAX_PAGE = 1_000_000  # list pages: beyond it the offset would pass any table we hold


class RowIdConverter(BaseConverter):
    """`<id:name>` in a route: a row id. Digits that no row can have (0, or past ROW_ID_MAX) become 0, which the
    view finds no row for: 404 whatever the method (refusing them here would make other methods' routes
    answer 405)."""

    regex = r"\d+"

    def to_python(self, value: str) -> int:
        return whole_number(value, ROW_ID_MAX) or 0

    def to_url(self, value: object) -> str:
        return str(value)
