"""Imported by the reliability suite's fork server (tests/reliability.py) before it forks runs.

The import makes every forked ``refresh_all`` start without paying for the code
location's imports; the server does nothing else, so no thread of it is busy
when it forks.
"""

from tests.reliability import preload

preload()
