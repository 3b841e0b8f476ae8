"""The Flask side's floor: a bare Flask app answering "hello", served by gunicorn like the reference.

gunicorn -w 2 -b 127.0.0.1:PORT bare_flask:app   (and -k gthread --threads 8)
"""

from flask import Flask

app = Flask(__name__)


@app.get("/")
def hello():
    return "hello"
