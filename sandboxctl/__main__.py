"""python -m sandboxctl"""

from sandboxctl.cli import main

main()
