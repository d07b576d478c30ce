"""Errors a user can cause. The CLI prints these as one clear line, no traceback."""


class VitsamError(Exception):
    """Bad input from the user: unknown name, bad key, missing or corrupt data."""


def unknown_choice(kind: str, value, choices) -> VitsamError:
    """The one message shape for 'X is not one of the valid choices'."""
    listed = ", ".join(sorted(str(c) for c in choices))
    return VitsamError(f"unknown {kind} {value!r}; valid choices: {listed}")
