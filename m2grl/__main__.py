from m2grl.cli import main

raise SystemExit(main())
