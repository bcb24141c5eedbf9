from peftpipe.cli import app

app()
