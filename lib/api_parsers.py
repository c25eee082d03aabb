"""The REST API's JSON parser, bounded in depth as in size.

Size: DRF reads a JSON body through `request.body`, which refuses anything over
DATA_UPLOAD_MAX_MEMORY_SIZE (a 413, lib/http_errors.py). Depth: Python's
json module recurses once per `[` or `{`, so 100,000 of them raise RecursionError,
a 500; a document nested past GENERATOR_MAX_JSON_DEPTH is a 400 here instead.
No request the API takes nests deeper than a few levels.
"""

from __future__ import annotations

import codecs
import json

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser


def json_depth_over(value: object, limit: int) -> bool:
    """Whether `value` nests lists and objects more than `limit` deep (iterative:
    the check must not recurse either)."""
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        pending.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


class BoundedJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        limit = settings.GENERATOR_MAX_JSON_DEPTH
        try:
            text = codecs.getreader(encoding)(stream).read()
            data = json.loads(text, parse_constant=self._refuse_constant)
        except RecursionError:
            raise ParseError(f"JSON nested deeper than {limit} levels") from None
        except ValueError as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
        if json_depth_over(data, limit):
            raise ParseError(f"JSON nested deeper than {limit} levels")
        return data

    @staticmethod
    def _refuse_constant(name: str):
        # DRF's strict mode, as its own parser has it: NaN and Infinity are not JSON.
        raise ValueError(f"{name} is not valid JSON")
