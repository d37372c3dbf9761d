from services.worker.malloc import arrow_pool_before_import

arrow_pool_before_import()  # before anything imports pyarrow: Arrow chooses its pool then

from services.worker.worker import main  # noqa: E402

raise SystemExit(main())
