"""mailctl's test suite: a package, so tests import shared code as ``tests.helpers``.

Test modules import only mailctl and ``tests.helpers``, never each other, ``conftest`` or
``bench/`` (tests/test_layout.py checks this).
"""
