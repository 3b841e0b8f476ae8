"""The floor: a bare Quart app answering "hello", served by the project's hypercorn.toml.

hypercorn -c ../../hypercorn.toml --bind 127.0.0.1:PORT bare_quart:app
"""

from quart import Quart

app = Quart(__name__)


@app.get("/")
async def hello():
    return "hello"
