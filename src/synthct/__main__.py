from synthct.cli import main

raise SystemExit(main())
