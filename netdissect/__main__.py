from netdissect.cli import main

raise SystemExit(main())
