"""The role processes: `python -m glasses.search chief|worker --spec SPEC.json [--tuner-id ID]`,
or `python -m glasses.search spare`: one that imports first and waits for its role
(glasses.search.spares).

Started by `glasses.search.run_chief` / `run_worker`; each role is its own process because
Keras Tuner takes a role from process-wide environment variables.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from glasses.errors import GlassesError
from glasses.files import process_temp_dir
from glasses.search.spec import SearchSpec
from glasses.watchdog import exit_with_parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m glasses.search", description=__doc__.split("\n")[0])
    parser.add_argument("role", choices=["chief", "worker"])
    parser.add_argument("--spec", type=Path, required=True, help="the search's JSON spec")
    parser.add_argument("--tuner-id", default=None, help="a worker's stable id: tuner0, tuner1, ...")
    args = parser.parse_args(argv)
    if args.role == "worker" and (not args.tuner_id or "chief" in args.tuner_id):
        parser.error("a worker needs --tuner-id, and it must not contain 'chief'")
    exit_with_parent()  # a role never outlives the run that started it, however that run ends
    spec = SearchSpec.load(args.spec)
    # Its temporary files (TensorFlow's autograph writes some) in the search's folder, removed at
    # the end: _exit skips the interpreter's exit, where TensorFlow would remove them.
    with process_temp_dir(spec.directory, args.tuner_id or "chief"):
        try:
            if args.role == "chief":
                from glasses.search.chief import serve

                return serve(spec)
            from glasses.search.worker import work

            return work(spec, args.tuner_id)
        except GlassesError as error:
            print(f"{args.role} {args.tuner_id or ''}: error: {error}".replace("  ", " "), flush=True)
            return 1


def _exit(code: int) -> None:
    """Ends the role at once: its outputs are written (atomically) and its lines flushed, and
    TensorFlow's interpreter teardown would add about 1.4 s to every role of every search."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    if sys.argv[1:] == ["spare"]:
        from glasses.search.spares import await_role

        role = await_role()
        _exit(0 if role is None else main(role))
    _exit(main())
