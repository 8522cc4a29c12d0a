"""The one error a compose file can raise: what is wrong, where (file, service, key), how to fix.

Kept apart so the loader and the converter word their refusals the same way and the CLI
can catch a single type.
"""


class ComposeError(ValueError):
    """A compose file Docker would refuse; the message names the file and the key."""

    def __init__(self, message: str, file: str | None = None) -> None:
        self.file = file
        super().__init__(f"{file}: {message}" if file else message)
