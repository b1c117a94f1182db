"""What the tests run outside pytest: the worker processes they start
(``python -m tests.support.NAME``), the apps they install (``fencedapp``, ``deploy``), and
the plain-Python polling helper (:mod:`tests.support.polling`)."""
