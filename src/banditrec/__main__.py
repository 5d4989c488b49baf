from banditrec.cli import main

main()
