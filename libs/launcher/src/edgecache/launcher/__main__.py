"""``python -m edgecache.launcher``: the same as the ``edgecache`` command."""

from edgecache.launcher.cli import main

main()
