from peftpipe.cli import main

main()
