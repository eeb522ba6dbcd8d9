from weaverdata.cli import main

main()
