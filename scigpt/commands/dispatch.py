"""Run one subcommand by name: import its module (only that one: ``scigpt export`` does not
import the trainer's data pipeline, ``scigpt plan`` not DeepSpeed's checkpoint reader) and
turn the errors a user can fix into a message and an exit code.

Exit codes: 0 success; 1 a runtime failure (bad data file, diverged run, another writer,
rejected inputs); 2 a usage or config error (printed without a traceback, naming the key and
the fix; ``SCIGPT_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from scigpt.commands import EXIT_FAIL, EXIT_USAGE
from scigpt.config_loader import ConfigError
from scigpt.prepare import IngestRejected
from scigpt.runlock import RunLocked, RunLockLost

# subcommand -> (module under scigpt.commands, function)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "run"),
    "diagnose": ("diagnose", "run"),
    "ensemble": ("ensemble", "run"),
    "evaluate": ("evaluate", "run"),
    "export": ("export", "run"),
    "finetune": ("train", "finetune"),
    "keygen": ("keygen", "run"),
    "plan": ("plan", "run"),
    "predict": ("predict", "run"),
    "submit": ("submit", "run"),
    "sweep": ("sweep", "run"),
    "prepare": ("prepare", "run"),
    "train": ("train", "run"),
    "transfer": ("transfer", "run"),
    "validate": ("validate", "run"),
    "verify": ("verify", "run"),
}


def run(command: str, args: argparse.Namespace) -> int:
    """Run ``command`` with its parsed arguments; returns the exit code."""
    module, func = COMMANDS[command]
    try:
        return getattr(importlib.import_module(f"scigpt.commands.{module}"), func)(args)
    except ConfigError as e:
        print(f"scigpt: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (RunLocked, RunLockLost, IngestRejected) as e:
        # Runtime refusals with their own clear message: another writer, rejected inputs.
        if os.environ.get("SCIGPT_DEBUG"):
            raise
        print(f"scigpt {command}: error: {e}", file=sys.stderr)
        return EXIT_FAIL
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        # User-facing problems (bad layout, missing data, existing run dir): message, no
        # traceback. SCIGPT_DEBUG=1 shows it, for when the problem is ours.
        if os.environ.get("SCIGPT_DEBUG"):
            raise
        print(f"scigpt {command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE if isinstance(e, ValueError) else EXIT_FAIL
    except KeyboardInterrupt:
        print("scigpt: interrupted", file=sys.stderr)
        return 130
