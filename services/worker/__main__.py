from services.worker.worker import main

main()
