"""Errors of the prep stage: one fatal kind (one line, exit code 2) and one per-record kind."""


class UserError(Exception):
    """A problem with the user's input, reported as one line naming the file, line, key or rank; exit 2."""

    exit_code = 2


class PrepError(UserError):
    """A fatal problem of the prep stage."""


class BadRecord(Exception):
    """A record that cannot be used; skipped and counted, or fatal under ``--strict``."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# Reasons that mean the input is malformed (``--strict`` stops on these). Anything else is a
# filter (a document too short for a window) and is only counted.
BAD_INPUT_PREFIXES = (
    "invalid_utf8",
    "malformed_json",
    "not_an_object",
    "missing_field",
    "non_string_field",
    "non_list_field",
    "empty_file",
    "binary_file",
    "corrupt_file",
    "unknown_task",
    "untokenizable",
)


def is_bad_input(reason: str) -> bool:
    return reason.startswith(BAD_INPUT_PREFIXES)


def at_least(minimum: int):
    """An argparse ``type``: an integer of at least ``minimum``; argparse then names the argument in its one line
    (``llm2comp encode: error: argument --batch-size: must be at least 1, got -4``)."""
    import argparse

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse
