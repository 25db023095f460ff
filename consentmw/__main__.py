from consentmw.cli import main

raise SystemExit(main())
