"""The bodies of the ``scigpt`` subcommands, one module each (``scigpt.cli`` parses the
arguments and dispatches here). Each module's ``run(args)`` takes the parsed
``argparse.Namespace`` and returns an exit code; commands never import the CLI.

Exit codes: 0 success; 1 a runtime failure (bad data file, diverged run); 2 a usage or config
error.
"""

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

DEMO_CONFIG = "runs/demo.yaml"
