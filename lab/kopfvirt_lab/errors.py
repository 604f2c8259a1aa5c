"""The one error the lab raises: a message that says what is wrong and what to do."""


class LabError(RuntimeError):
    pass
