from services.worker.worker import main

raise SystemExit(main())
