from scigpt.cli import main

raise SystemExit(main())
