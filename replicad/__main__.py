from replicad.cli.main import main

raise SystemExit(main())
