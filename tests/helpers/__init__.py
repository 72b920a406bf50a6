"""Code the tests share with each other and with the tooling (benchmarks/, scripts/); not part of the package.

Import it as ``tests.helpers.<module>`` from the repository root: pytest puts the root on ``sys.path``
(``pythonpath`` in pyproject.toml), and the tooling runs as ``python -m benchmarks.<name>`` or
``python -m scripts.<name>`` from there.
"""
