from ia_continu.cli import app

app()
