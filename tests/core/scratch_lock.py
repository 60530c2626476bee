"""The tests' own advisory-lock namespace: the product's registry (core.db.LockNamespace) holds only the product's."""

import enum


class ScratchLock(enum.Enum):
    TEST = "tests.scratch"
