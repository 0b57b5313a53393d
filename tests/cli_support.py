"""Running a package's command line in-process, as the CLI tests do."""
from __future__ import annotations

from typing import Callable


def run_main(main: Callable[[list[str]], int], capsys, *args) -> tuple[int, str, str]:
    """main() in-process: exit code (argparse's SystemExit included), stdout, stderr."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err
