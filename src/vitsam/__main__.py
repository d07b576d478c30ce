from vitsam.cli import main

raise SystemExit(main())
